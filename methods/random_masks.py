"""A control no paper ran: SoCo-DT's initial random per-task masks, never updated.

SoCo-DT starts every task from an independent random ERK mask at 20% sparsity and lets
TAMU move entries. This method starts from exactly the same masks (same ERK densities, same
random stream: a socodt run and a random-masks run of one seed begin identical) and keeps
them, so a table shows how much of SoCo-DT's result comes from TAMU and how much from
giving each task its own random subnetwork. It logs its (unchanging) masks on SoCo-DT's
update schedule, so the mask-dynamics table shows it with zero conflicts and recoveries.
"""

from __future__ import annotations

from mtrl_bench.method import MaskUpdateContext, register_method

from .erk import ERK_SPARSITY, ERKMaskMethod


@register_method("random-masks", role="ablation", ablation_of="socodt",
                 components="none (fixed random masks)", order=70)
class RandomMasks(ERKMaskMethod):
    """Control: SoCo-DT's initial random ERK masks per task, never updated (no TAMU)."""

    mask_update_needs_gradients = False  # nothing to score: no per-task gradients captured

    def __init__(self, update_interval: int = 10, initial_sparsity: float = ERK_SPARSITY):
        super().__init__(update_interval, initial_sparsity)

    def update_masks(self, ctx: MaskUpdateContext) -> dict[str, object]:
        zeros = [0] * ctx.masks.shape[0]
        return {"conflicted": zeros, "recovered": zeros}
