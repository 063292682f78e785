"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

Every step, each task's gradient g_i is projected, in a random order of the other tasks,
onto the normal plane of every task gradient g_j it conflicts with:

    g_i' <- g_i' - (g_i'·g_j / ||g_j||²) g_j   whenever g_i'·g_j < 0,

always against the original g_j (Algorithm 1 of the paper), and the step follows the mean
of the projected gradients (the mean, not the paper's sum, because every method here steps
on the mean over tasks; they differ by the factor N, which AdamW's normalisation mostly
absorbs, though the 0.25 gradient-norm clip before it sees the mean's smaller norm).

Each g_i' stays a combination of the original gradients, g_i' = g_i − Σ_j C_ij g_j, so the
projections run on the N x N Gram matrix G = g gᵀ in float64 on the host, and the result
is one (N)-by-(N, P) product: no per-pair work over the P parameters.
"""

from __future__ import annotations

import numpy as np
import torch

from mtrl_bench.method import GradientContext, Method, register_method


def pcgrad_coefficients(gram: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """(N, N) C with g_i' = g_i − Σ_j C_ij g_j, given G = g gᵀ and, per task i, the order in
    which it visits the other tasks."""
    n = gram.shape[0]
    coefficients = np.zeros((n, n))
    for i in range(n):
        row = np.zeros(n)  # g_i' = g_i - row · g
        for j in orders[i]:
            dot = gram[i, j] - row @ gram[:, j]  # g_i' · g_j
            if dot < 0 and gram[j, j] > 0:
                row[j] += dot / gram[j, j]
        coefficients[i] = row
    return coefficients


def task_orders(n: int, generator: torch.Generator) -> list[list[int]]:
    """Per task i, a uniformly random order of the other tasks: one draw of N x (N-1) keys
    on the generator's device and one copy to the host (not one sync per task)."""
    keys = torch.rand((n, max(n - 1, 0)), generator=generator, device=generator.device)
    ranks = keys.argsort(dim=1).tolist()
    return [[j if j < i else j + 1 for j in row] for i, row in enumerate(ranks)]


@register_method("pcgrad", role="baseline", order=30)
class PCGrad(Method):
    """PCGrad: project each task gradient off the ones it conflicts with (Yu et al. 2020)."""

    combines_gradients = True

    def combine_gradients(self, ctx: GradientContext) -> torch.Tensor:
        grads = ctx.task_grads
        n = grads.shape[0]
        gram = (grads @ grads.T).double().cpu().numpy()
        orders = task_orders(n, ctx.generator)
        coefficients = pcgrad_coefficients(gram, orders)
        # mean_i g_i' = (1/N) Σ_i (g_i − Σ_j C_ij g_j) = ((1 − colsum C) / N) · g
        weights = (1.0 - coefficients.sum(axis=0)) / n
        return torch.as_tensor(weights, dtype=grads.dtype, device=grads.device) @ grads
