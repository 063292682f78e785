"""MTDT (He et al. 2023): the Prompt-DT backbone conditioned on a learned task-ID embedding."""

from mtrl_bench.strategy import MaskStrategy, register_strategy


@register_strategy("mtdt", role="baseline")
class MTDT(MaskStrategy):
    """MTDT: task-ID embedding instead of a prompt, no masks (He et al. 2023)."""

    conditioning = "task_id"
