"""A control for the mechanism behind masks: sparsity without task structure.

Every task uses ONE random ERK mask (the same density as random-masks, drawn from the same
method stream, seed + 2), never updated. If per-task masks won only because a fixed 20%
cut of the weights regularises training (DropConnect-like), this control scores like
random-masks; if the gain needs each task to have its own subnetwork, it scores like
Prompt-DT.
"""

from __future__ import annotations

import torch

from mtrl_bench.method import register_method
from mtrl_bench.training.masking import MaskSegment

from .erk import erk_random_masks
from .random_masks import RandomMasks


@register_method("shared-mask", role="ablation", ablation_of="socodt",
                 components="none (one random mask for all tasks)", order=71)
class SharedMask(RandomMasks):
    """Control: one random ERK mask shared by every task, never updated (sparsity only)."""

    def initial_masks(self, num_tasks: int, segments: list[MaskSegment], theta: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
        one = erk_random_masks(1, segments, self.initial_sparsity, generator,
                               device=theta.device)
        return one.expand(num_tasks, -1).clone()
