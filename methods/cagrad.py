"""CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021).

The step d maximises the worst task's improvement within a ball around the mean gradient
g0: max_d min_i g_i·d subject to ||d − g0|| ≤ c·||g0||. Its dual is a problem over the
simplex of task weights w,

    min_{w ∈ Δ}  g_wᵀ g0 + c·||g0||·||g_w||,   g_w = Σ_i w_i g_i,

and then d = g0 + (c·||g0|| / ||g_w||) g_w. The dual lives on the N x N Gram matrix
G = g gᵀ (g_wᵀg0 = wᵀG1/N, ||g_w||² = wᵀGw), so it is solved on the host in float64 to
tolerance 1e-12 (SLSQP with the analytic gradient, G rescaled to unit mean diagonal: the
minimiser does not change and the problem is well conditioned whatever the gradient
scale). As in the authors' code (``rescale=1``), d is divided by 1 + c² by default.
"""

from __future__ import annotations

import numpy as np
import torch

from mtrl_bench.errors import UserError
from mtrl_bench.method import GradientContext, Method, register_method


def cagrad_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """The simplex weights w minimising wᵀG1/N + c·||g0||·sqrt(wᵀGw), ||g0||² = 1ᵀG1/N²."""
    from scipy.optimize import minimize

    n = gram.shape[0]
    scale = float(np.mean(np.diag(gram)))
    if n == 1 or scale <= 0:
        return np.full(n, 1.0 / n)
    g = gram / scale
    linear = g.mean(axis=1)  # G 1 / N
    g0_norm = float(np.sqrt(max(linear.mean(), 0.0)))  # ||g0|| = sqrt(1ᵀG1) / N
    radius = c * g0_norm

    def objective(w):
        quad = max(float(w @ g @ w), 1e-30)
        value = float(w @ linear) + radius * np.sqrt(quad)
        gradient = linear + radius * (g @ w) / np.sqrt(quad)
        return value, gradient

    start = np.full(n, 1.0 / n)
    result = minimize(objective, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * n,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                    "jac": lambda w: np.ones_like(w)}],
                      options={"ftol": 1e-12, "maxiter": 1000})
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


def cagrad_direction(grads: torch.Tensor, c: float, rescale: bool = True) -> torch.Tensor:
    """(P,) CAGrad's update from (N, P) task gradients."""
    gram = (grads @ grads.T).double().cpu().numpy()
    g0 = grads.mean(dim=0)
    w = torch.as_tensor(cagrad_weights(gram, c), dtype=grads.dtype, device=grads.device)
    g_w = w @ grads
    g0_norm, g_w_norm = g0.norm(), g_w.norm()
    step = torch.where(g_w_norm > 0, c * g0_norm / g_w_norm.clamp(min=1e-30), 0.0)
    direction = g0 + step * g_w
    return direction / (1.0 + c * c) if rescale else direction


@register_method("cagrad", role="baseline")
class CAGrad(Method):
    """CAGrad: the conflict-averse direction near the mean gradient, c = 0.4 (Liu et al. 2021)."""

    combines_gradients = True

    def __init__(self, update_interval: int = 0, c: float = 0.4, rescale: bool = True):
        super().__init__(update_interval)
        if not c >= 0:
            raise UserError(f"cagrad: c must be >= 0, got {c}")
        self.c = c
        self.rescale = rescale

    def combine_gradients(self, ctx: GradientContext) -> torch.Tensor:
        return cagrad_direction(ctx.task_grads, self.c, self.rescale)
