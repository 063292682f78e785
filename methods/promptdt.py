"""Prompt-DT (Xu et al. 2022): one shared model, no masks, every task uses every parameter."""

from mtrl_bench.strategy import MaskStrategy, register_strategy


@register_strategy("promptdt", role="baseline")
class PromptDT(MaskStrategy):
    """Prompt-DT: shared parameters for all tasks, no masks (Xu et al. 2022)."""
