"""Random Erdős–Rényi-Kernel (ERK) initial masks, and the base of the methods that start
from them (HarmoDT, SoCo-DT).

ERK (Evci et al. 2020, RigL) gives tensor l a density proportional to
sum(shape_l) / prod(shape_l), scaled so the overall density is ``1 - sparsity``; tensors
whose density would exceed 1 (biases, layer norms, small matrices) are made dense and the
scale is solved again for the rest. Each task draws its own random mask at those densities.
"""

from __future__ import annotations

import math

import torch

from mtrl_bench.errors import UserError
from mtrl_bench.method import Method
from mtrl_bench.training.masking import MaskSegment

#: the initial sparsity of every method that starts from ERK masks: HarmoDT's random ERK
#: masks per task at sparsity 0.2 (its code), SoCo-DT's Fig. 5 ("initial sparsity = 0.2");
#: the controls (random-masks, shared-mask, random-churn) take the same, to compare alike
ERK_SPARSITY = 0.2


def erk_densities(segments: list[MaskSegment], sparsity: float) -> list[float]:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    total = sum(s.numel for s in segments)
    raw = [sum(s.shape) / math.prod(s.shape) for s in segments]
    dense: set[int] = set()
    while True:
        budget = (1.0 - sparsity) * total - sum(segments[i].numel for i in dense)
        free = [i for i in range(len(segments)) if i not in dense]
        scale = budget / sum(raw[i] * segments[i].numel for i in free)
        newly_dense = {i for i in free if scale * raw[i] > 1.0}
        if not newly_dense:
            return [1.0 if i in dense else scale * raw[i] for i in range(len(segments))]
        dense |= newly_dense


def erk_random_masks(
    num_tasks: int, segments: list[MaskSegment], sparsity: float,
    generator: torch.Generator, device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(num_tasks, P) float32 binary masks, each tensor masked at its exact ERK density."""
    masks = torch.ones(num_tasks, segments[-1].stop, device=device)
    for seg, density in zip(segments, erk_densities(segments, sparsity)):
        n_off = seg.numel - round(density * seg.numel)
        if n_off <= 0:
            continue
        scores = torch.rand(num_tasks, seg.numel, generator=generator, device=generator.device)
        off = scores.topk(n_off, dim=1).indices.to(device) + seg.offset
        masks.scatter_(1, off, 0.0)
    return masks


class ERKMaskMethod(Method):
    """Base for methods that start from an independent random ERK mask per task at
    ``initial_sparsity`` (HarmoDT, SoCo-DT); each declares the parameter in its own
    signature with :data:`ERK_SPARSITY` as its default, and this checks it."""

    sparsity_parameter = "initial_sparsity"  # its name in the signature (HarmoDT: sparsity)

    def __init__(self, update_interval: int, initial_sparsity: float):
        super().__init__(update_interval)
        if not 0.0 <= initial_sparsity < 1.0:
            raise UserError(f"{self.name}: {self.sparsity_parameter} must be in [0, 1), got "
                            f"{initial_sparsity}")
        self.initial_sparsity = initial_sparsity

    def initial_masks(
        self, num_tasks: int, segments: list[MaskSegment], theta: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        return erk_random_masks(num_tasks, segments, self.initial_sparsity, generator,
                                device=theta.device)
