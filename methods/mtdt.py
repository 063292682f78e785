"""MTDT (He et al. 2023): the Prompt-DT backbone conditioned on a learned task-ID embedding."""

from mtrl_bench.method import Method, register_method


@register_method("mtdt", role="baseline", order=11)
class MTDT(Method):
    """MTDT: task-ID embedding instead of a prompt, no masks (He et al. 2023)."""

    conditioning = "task_id"
