"""CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021).

The step d maximises the worst task's improvement within a ball around the mean gradient
g0: max_d min_i g_i·d subject to ||d − g0|| ≤ c·||g0||. Its dual is a problem over the
simplex of task weights w,

    min_{w ∈ Δ}  g_wᵀ g0 + c·||g0||·||g_w||,   g_w = Σ_i w_i g_i,

and then d = g0 + (c·||g0|| / ||g_w||) g_w. The dual lives on the N x N Gram matrix
G = g gᵀ (g_wᵀg0 = wᵀG1/N, ||g_w||² = wᵀGw), so it is solved on the host in float64
(:func:`cagrad_weights`: SLSQP in coordinates normalised by each task's gradient norm),
and every solve is certified by its duality gap, which is 0 at the optimum: below 1e-6 of
||g0||·max_i ||g_i|| while task gradient norms span up to ~6 decades (the authors' SLSQP
on raw weights loses accuracy beyond ~2); a larger gap is reported with a warning. As in
the authors' code (``rescale=1``), d is divided by 1 + c² by default.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from mtrl_bench.errors import UserError
from mtrl_bench.method import GradientContext, Method, register_method

#: duality gap (normalised by ||g0||·max_i ||g_i||) above which a solve is reported
GAP_WARNING = 1e-5


def cagrad_weights(gram: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """The simplex weights w minimising wᵀG1/N + c·||g0||·sqrt(wᵀGw) (||g0||² = 1ᵀG1/N²),
    and the normalised duality gap of the solution.

    Solved in normalised coordinates v_i = w_i·||g_i|| (each task's gradient scaled to unit
    norm, so the quadratic term has a unit diagonal whatever the spread of gradient norms;
    the simplex becomes Σ v_i/||g_i|| = 1) by SLSQP with the analytic gradient. The gap
    F(w) − min_i g_i·d(w) between the dual value and the worst task's improvement along the
    resulting direction is 0 at the optimum (strong duality) and certifies the solve.
    """
    from scipy.optimize import minimize

    n = gram.shape[0]
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    if n == 1 or not np.any(norms > 0):
        return np.full(n, 1.0 / n), 0.0
    live = norms > 0  # a task with a zero gradient cannot lower the objective: weight 0
    inv = np.where(live, 1.0 / np.where(live, norms, 1.0), 0.0)
    unit = gram * inv[:, None] * inv[None, :]  # Gram matrix of the unit-norm gradients
    g0_norm = float(np.sqrt(max(gram.mean(), 0.0)))
    if g0_norm == 0.0:
        return np.full(n, 1.0 / n), 0.0
    linear = (gram.mean(axis=1) * inv) / g0_norm  # ĝ_i·g0 / ||g0||
    radius = c

    def objective(v):
        quad = max(float(v @ unit @ v), 1e-300)
        return (float(v @ linear) + radius * np.sqrt(quad),
                linear + radius * (unit @ v) / np.sqrt(quad))

    start = np.where(live, 1.0, 0.0) / inv[live].sum()
    result = minimize(objective, start, jac=True, method="SLSQP",
                      bounds=[(0.0, None) if ok else (0.0, 0.0) for ok in live],
                      constraints=[{"type": "eq", "fun": lambda v: v @ inv - 1.0,
                                    "jac": lambda v: inv}],
                      options={"ftol": 1e-15, "maxiter": 2000})
    w = np.clip(result.x, 0.0, None) * inv
    w = w / w.sum()
    return w, _normalised_gap(gram, w, c, norms, g0_norm)


def _normalised_gap(gram, w, c, norms, g0_norm) -> float:
    """(F(w) − min_i g_i·d(w)) / (||g0||·max_i ||g_i||), all from the Gram matrix, the
    minimum over the tasks the solve weighs: a task with a zero gradient has g_i·d = 0
    whatever d is, which is no sign of an inexact solve."""
    g_w_norm = float(np.sqrt(max(w @ gram @ w, 0.0)))
    dual = float(w @ gram.mean(axis=1)) + c * g0_norm * g_w_norm
    improvement = gram.mean(axis=1) + (c * g0_norm / g_w_norm * (gram @ w)
                                       if g_w_norm > 0 else 0.0)  # g_i·d for every task
    worst = float(improvement[norms > 0].min())
    return max(dual - worst, 0.0) / (g0_norm * float(norms.max()))


def cagrad_direction(grads: torch.Tensor, c: float, rescale: bool = True,
                     ) -> tuple[torch.Tensor, float]:
    """(P,) CAGrad's update from (N, P) task gradients, and the solve's normalised gap."""
    gram = (grads @ grads.T).double().cpu().numpy()
    g0 = grads.mean(dim=0)
    weights, gap = cagrad_weights(gram, c)
    w = torch.as_tensor(weights, dtype=grads.dtype, device=grads.device)
    g_w = w @ grads
    g0_norm, g_w_norm = g0.norm(), g_w.norm()
    step = torch.where(g_w_norm > 0, c * g0_norm / g_w_norm.clamp(min=1e-30), 0.0)
    direction = g0 + step * g_w
    return (direction / (1.0 + c * c) if rescale else direction), gap


@register_method("cagrad", role="baseline", order=31)
class CAGrad(Method):
    """CAGrad: the conflict-averse direction near the mean gradient, c = 0.4 (Liu et al. 2021)."""

    combines_gradients = True

    # c: radius of the ball around the mean gradient, as a fraction of its norm. 0.4 is the
    # default this project adopted (the paper's value on NYUv2); the authors' Meta-World
    # scripts use c = 0.9 on MT10 and 0.5 on MT50 (mtrl/mtrl_files/run.sh in their code), so
    # `--grid "cagrad.c=0.4,0.5,0.9"` is worth running.
    # Divide the direction by 1 + c^2, as the authors' code does with rescale=1 (their
    # default), so that its scale stays close to the mean gradient's.
    def __init__(self, update_interval: int = 0, c: float = 0.4, rescale: bool = True):
        super().__init__(update_interval)
        if not c >= 0:
            raise UserError(f"cagrad: c must be >= 0, got {c}")
        self.c = c
        self.rescale = rescale
        self.last_gap = 0.0  # normalised duality gap of the last solve (0 = optimal)
        self._warned = False

    def combine_gradients(self, ctx: GradientContext) -> torch.Tensor:
        direction, self.last_gap = cagrad_direction(ctx.task_grads, self.c, self.rescale)
        if self.last_gap > GAP_WARNING and not self._warned:
            self._warned = True
            warnings.warn(f"cagrad: the dual was solved only to a normalised gap of "
                          f"{self.last_gap:.1e} at step {ctx.step} (task gradient norms "
                          "spread over many decades); reported once", stacklevel=2)
        return direction
