"""A control for TAMU's choice of entries: masks that move as much, chosen at random.

Starting from SoCo-DT's initial random ERK masks (same densities, same seed stream), every
update turns ``conflicted_per_update`` of each task's active entries off and
``recovered_per_update`` of its suppressed entries back on, chosen uniformly at random
from the method's own stream. Set the two counts to what a TAMU variant did on average
(its mask-dynamics row): the masks then move as far, and drift in sparsity as much, but
without looking at any gradient. Conflicted entries go to 0 (no Fisher score to give them
a soft value), as in the A+M ablation (socodt-hard).
"""

from __future__ import annotations

import torch

from mtrl_bench.errors import UserError
from mtrl_bench.method import MaskUpdateContext, register_method

from .erk import ERK_SPARSITY
from .random_masks import RandomMasks


@register_method("random-churn", role="ablation", ablation_of="socodt",
                 components="none (random churn)", order=72)
class RandomChurn(RandomMasks):
    """Control: random masks whose entries churn at random, as many per update as TAMU's."""

    def __init__(self, update_interval: int = 10, initial_sparsity: float = ERK_SPARSITY,
                 conflicted_per_update: int = 0, recovered_per_update: int = 0):
        super().__init__(update_interval, initial_sparsity)
        if min(conflicted_per_update, recovered_per_update) < 0:
            raise UserError("random-churn: conflicted_per_update and recovered_per_update "
                            "must be >= 0")
        self.conflicted_per_update = conflicted_per_update
        self.recovered_per_update = recovered_per_update

    def update_masks(self, ctx: MaskUpdateContext) -> dict[str, object]:
        masks = ctx.masks
        active = masks == 1  # chosen before either change: a flipped entry stays flipped
        conflicted = self._flip(masks, active, self.conflicted_per_update, 0.0, ctx.generator)
        recovered = self._flip(masks, ~active, self.recovered_per_update, 1.0, ctx.generator)
        return {"conflicted": conflicted, "recovered": recovered}

    @staticmethod
    def _flip(masks: torch.Tensor, eligible: torch.Tensor, count: int, value: float,
              generator: torch.Generator) -> list[int]:
        """Set ``count`` entries drawn uniformly among each task's ``eligible`` ones (all of
        them where fewer are eligible) to ``value``; returns the counts per task."""
        if count == 0:
            return [0] * masks.shape[0]
        keys = torch.rand(masks.shape, generator=generator, device=generator.device)
        keys = keys.to(masks.device).masked_fill_(~eligible, -1.0)  # never drawn
        chosen = keys.topk(min(count, masks.shape[1]), dim=1)
        taken = chosen.values >= 0
        rows = torch.arange(masks.shape[0], device=masks.device)[:, None].expand_as(taken)
        masks[rows[taken], chosen.indices[taken]] = value
        return taken.sum(dim=1).tolist()
