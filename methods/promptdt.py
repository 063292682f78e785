"""Prompt-DT (Xu et al. 2022): one shared model, no masks, every task uses every parameter."""

from mtrl_bench.method import Method, register_method


@register_method("promptdt", role="baseline", order=10)
class PromptDT(Method):
    """Prompt-DT: shared parameters for all tasks, no masks (Xu et al. 2022)."""
