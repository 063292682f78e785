"""SoCo-DT: Fisher-weighted soft masks updated by TAMU (paper §4, eqs. 5–19, Algorithm 1).

Every periodic update works on whole ``(N tasks, P entries)`` tensors on the masks' device;
nothing loops over tasks or parameters in Python. Per task i, with g_i the gradient w.r.t.
task i's effective weights, L_i its loss and ḡ = mean_i g_i:

* Fisher (eq. 5): F_i = ((g_i / L_i) ⊙ M_i)², since ∇log L = ∇L / L; ``log_fisher=False``
  gives HarmoDT's (g_i ⊙ M_i)². Where L_i = 0, F_i = 0.
* Fisher scale: the paper "normalizes Fisher information across all parameters" without
  saying how, and leaves λ open. In eq. 8 we use F̂ = F · Σ|g⊙ḡ| / ΣF, both sums over every
  entry of every task, so that the Fisher term carries the same total mass as the
  alignment term and λ is a dimensionless weight that keeps its meaning while gradients
  shrink during training. The factor is one positive scalar for all tasks: per-task
  factors would cancel the per-task 1/L_i² that is all that separates eq. 5 from
  HarmoDT's g², making ``log_fisher`` a no-op. Min-max soft values (eq. 17) and any
  ordering within a task are unchanged by it.
* Conflict score (eq. 8): C_i = g_i ⊙ ḡ + λ F̂_i.
* Harmony score (eqs. 9–10): H_i = ReLU((α|ḡ| − |g_i|)/(α|ḡ|)), defined as 0 where ḡ = 0
  (the limit for g_i ≠ 0; the score is 0 there anyway because g_i ⊙ ḡ = 0); the score is
  (g_i ⊙ ḡ)·H_i where g_i ⊙ ḡ > 0, else g_i ⊙ ḡ.
* Thresholds (eqs. 11–14): per task, quantiles of that task's scores over all P entries
  (eq. 11 defines them over "the total number of parameters"), IQR = Q_q3 − Q_q1. Active
  entries (M = 1) with C < Q_q1 − β_t·IQR conflict; suppressed entries (M < 1) whose
  harmony score exceeds Q_q3 + β_t·IQR (quantiles of the harmony scores) are recovered.
* β_t (eqs. 15–16): asymmetric cosine, β_left_max up to T/2, β_right_max after.
* Mask update (eqs. 17–19): conflicting entries take (F_ij − min_j F_i)/(max_j F_i −
  min_j F_i), recovered entries become 1. If max F_i = min F_i the soft value is 0 (no
  importance information: the entry is masked as HarmoDT would). A soft value of exactly
  1 (the argmax of F) would leave the entry active, so soft values are capped at the
  largest float32 below 1.

The ablations of Table 4 are subclasses that replace one component each.
"""

from __future__ import annotations

import math

import torch

from mtrl_bench.errors import UserError
from mtrl_bench.method import MaskUpdateContext, register_method, signed_log_histogram

from .erk import ERK_SPARSITY, ERKMaskMethod

#: largest float32 below 1: the cap on soft values, so a conflicting entry never stays active
BELOW_ONE = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))


# --- eq. 5 and the Fisher scale -----------------------------------------------------------

def fisher_information(
    grads: torch.Tensor, masks: torch.Tensor, losses: torch.Tensor, log: bool = True,
) -> torch.Tensor:
    """(N, P) F_i = ((g_i / L_i) ⊙ M_i)² (eq. 5), or (g_i ⊙ M_i)² with ``log=False``."""
    fisher = grads * masks
    if log:
        fisher.mul_(torch.where(losses > 0, 1.0 / losses, 0.0)[:, None])
    return fisher.square_()


def fisher_scale(alignment: torch.Tensor, fisher: torch.Tensor) -> float:
    """Σ|g⊙ḡ| / ΣF over all tasks and entries (0 if F is all zero): see the module doc."""
    total = float(fisher.sum())
    if total <= 0:
        return 0.0
    return float(torch.linalg.vector_norm(alignment, ord=1)) / total


# --- eqs. 8-10 -------------------------------------------------------------------------------

def conflict_scores(alignment: torch.Tensor, fisher: torch.Tensor, weight: float) -> torch.Tensor:
    """C_i = g_i⊙ḡ + weight·F_i (eq. 8); ``weight`` is λ times the Fisher scale."""
    return torch.add(alignment, fisher, alpha=weight)


def harmony_factor(grads: torch.Tensor, mean_grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """H_i = ReLU((α|ḡ| − |g_i|)/(α|ḡ|)) (eq. 9), 0 where ḡ = 0."""
    tol = alpha * mean_grad.abs()
    nonzero = tol > 0
    factor = grads.abs().neg_().add_(tol).div_(torch.where(nonzero, tol, 1.0))
    return factor.clamp_(min=0).mul_(nonzero)


def harmony_scores(
    alignment: torch.Tensor, grads: torch.Tensor, mean_grad: torch.Tensor, alpha: float,
) -> torch.Tensor:
    """(g_i⊙ḡ)·H_i where g_i⊙ḡ > 0, else g_i⊙ḡ (eq. 10)."""
    scores = harmony_factor(grads, mean_grad, alpha).mul_(alignment)
    return torch.where(alignment > 0, scores, alignment, out=scores)


# --- eqs. 11-16 ------------------------------------------------------------------------------

def quantile_rank(q: float, n: int) -> float:
    """k = q·n of eq. 11 (1-based rank), clamped into [1, n].

    q·n is snapped to the nearest integer when within 1e-12 relative of it, so that float
    error (0.07·100 = 7.000000000000001) does not turn an integer rank into an
    interpolation. Below 1 there is no X_(k): the quantile is then the minimum.
    """
    k = q * n
    if abs(k - round(k)) <= 1e-12 * max(1.0, k):
        k = float(round(k))
    return min(max(k, 1.0), float(n))


def order_statistic_pair(x: torch.Tensor, a: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, (X_(a), X_(a+1)) with 1-based ranks on the ascending order (X_(n+1) := X_(n)).

    Exact and batched over rows: one ``topk`` of the shorter side of rank a (a full sort of
    50 × 4.7M entries would cost far more), then a ``topk`` of 2 on that slice.
    """
    n = x.shape[1]
    b = min(a + 1, n)
    if b <= n - a + 1:  # the b smallest hold X_(a) and X_(b) as their two largest
        head = x.topk(b, dim=1, largest=False, sorted=False).values
        top = head.topk(min(2, b), dim=1).values
        return (top[:, -1] if b > a else top[:, 0]), top[:, 0]
    tail = x.topk(n - a + 1, dim=1, sorted=False).values  # X_(a) .. X_(n)
    low = tail.topk(min(2, n - a + 1), dim=1, largest=False).values
    return low[:, 0], low[:, -1]


def paper_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Eq. 11 per row of ``x`` (N, n): X_(k) if k = q·n is an integer, else
    (1−γ)·X_(⌊k⌋) + γ·X_(⌈k⌉) with γ = k − ⌊k⌋ (see :func:`quantile_rank`)."""
    k = quantile_rank(q, x.shape[1])
    low, high = order_statistic_pair(x, int(k))
    gamma = k - math.floor(k)
    if gamma == 0:
        return low
    return (1.0 - gamma) * low + gamma * high


def quartiles(scores: torch.Tensor, q1: float, q3: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (Q_q1, Q_q3) (eq. 11); IQR = Q_q3 − Q_q1 (eq. 12)."""
    return paper_quantile(scores, q1), paper_quantile(scores, q3)


def cosine_anneal(high: float, low: float, t: float, total: float) -> float:
    """g(max, min, t, T) = min + ½(max − min)(1 + cos(2πt/T)) (eq. 15)."""
    return low + 0.5 * (high - low) * (1.0 + math.cos(2.0 * math.pi * t / total))


def beta_schedule(
    t: float, total: float, left_max: float, minimum: float, right_max: float,
) -> float:
    """β_t (eq. 16): g(β_left_max, β_min) for t ≤ T/2, g(β_right_max, β_min) after."""
    if total <= 0:
        raise ValueError(f"the training horizon T must be positive, got {total}")
    high = left_max if t <= total / 2 else right_max
    return cosine_anneal(high, minimum, t, total)


# --- eqs. 17-19 ------------------------------------------------------------------------------

def soft_mask_values(fisher: torch.Tensor) -> torch.Tensor:
    """(F_ij − min_j F_i)/(max_j F_i − min_j F_i) (eq. 17), 0 where max = min, capped below 1.

    Overwrites and returns ``fisher``.
    """
    low = fisher.amin(dim=1, keepdim=True)
    span = fisher.amax(dim=1, keepdim=True) - low
    fisher.sub_(low).div_(torch.where(span > 0, span, 1.0))
    return fisher.clamp_(max=BELOW_ONE)


@register_method("socodt", role="proposed", components="S+A+M", order=50)
class SoCoDT(ERKMaskMethod):
    """SoCo-DT: Fisher-weighted soft masks updated by TAMU (IQR thresholds, cosine β_t).

    The defaults are the paper's (Fig. 5: initial sparsity 0.2, α = 20, β_left_max = 20,
    β_min = 5, β_right_max = 30, q1/q3 = 5%/95%; eq. 5: the log of the Fisher), except
    λ = ``fisher_weight`` (0.1, ours: the paper gives none). They live only here: the
    ablations inherit them, and a binding ``socodt.<parameter>`` changes the ablations too
    (each reads its parent's bindings of its own parameters, its own bindings first).
    """

    #: component switches of the Table 4 ablations (fixed per registered name, not gin)
    soft_masks = True  # S: conflicting entries get their normalised Fisher (else 0)
    magnitude_harmony = True  # M: recovery ranks by eq. 10 (else plain g_i⊙ḡ)

    def __init__(
        self,
        # Algorithm 1's interval_mask; the runner derives it from
        # Run.mask_update_every_sequences (HarmoDT's every 500 iterations x 8 sequences)
        update_interval: int = 10,
        # an independent random ERK mask per task (as HarmoDT); Fig. 5: "initial sparsity = 0.2"
        initial_sparsity: float = ERK_SPARSITY,
        # H = ReLU((alpha|gbar| - |g_i|)/(alpha|gbar|)), eq. 9; Fig. 5
        alpha: float = 20.0,
        # the asymmetric cosine schedule of beta_t, eqs. 15-16; Fig. 5. The text says
        # beta_left_max > beta_right_max ("toward the end, beta_t slightly increases"), the
        # Fig. 5 defaults the opposite (20 < 30): we follow the stated defaults
        beta_left_max: float = 20.0,
        beta_min: float = 5.0,
        beta_right_max: float = 30.0,
        # quantiles of the IQR thresholds, eqs. 11-14; Fig. 5
        q1: float = 0.05,
        q3: float = 0.95,
        # lambda of eq. 8, not given in the paper. The Fisher term is rescaled to the total
        # mass of the alignment term |g_i*gbar|, so lambda is dimensionless. 0.1 takes the
        # ratio of HarmoDT-F's prune score 10*(gbar*g_i) + F = 10*(gbar*g_i + 0.1*F) (the
        # HarmoDT code): the same ratio, not the same weight, since HarmoDT's F = g^2 is not
        # rescaled and sum g^2 >= sum |g*gbar| (~6x on MT50-sized random gradients)
        fisher_weight: float = 0.1,
        # eq. 5 uses grad log L = grad L / L; False gives HarmoDT's (g_i*M_i)^2
        log_fisher: bool = True,
    ):
        super().__init__(update_interval, initial_sparsity)
        if not 0.0 <= q1 < q3 <= 1.0:
            raise UserError(f"{self.name}: need 0 <= q1 < q3 <= 1, got q1={q1}, q3={q3}")
        if alpha <= 0:
            raise UserError(f"{self.name}: alpha must be positive, got {alpha}")
        if min(beta_left_max, beta_min, beta_right_max) < 0:
            raise UserError(f"{self.name}: beta_left_max, beta_min, beta_right_max must be >= 0")
        self.alpha = alpha
        self.beta_left_max = beta_left_max
        self.beta_min = beta_min
        self.beta_right_max = beta_right_max
        self.q1 = q1
        self.q3 = q3
        self.fisher_weight = fisher_weight
        self.log_fisher = log_fisher

    def beta(self, step: int, total_steps: int) -> float:
        return beta_schedule(step, total_steps, self.beta_left_max, self.beta_min,
                             self.beta_right_max)

    def select_conflicting(self, scores: torch.Tensor, active: torch.Tensor, beta: float | None,
                           metrics: dict) -> torch.Tensor:
        """(N, P) bool: active entries with C < Q_q1 − β·IQR (eqs. 13–14)."""
        q_low, q_high = quartiles(scores, self.q1, self.q3)
        iqr = q_high - q_low
        threshold = q_low - beta * iqr
        metrics["conflict_threshold"] = threshold.tolist()
        selected = (scores < threshold[:, None]).logical_and_(active)
        metrics["conflict_hist"] = signed_log_histogram(scores)
        return selected

    def select_recovered(self, scores: torch.Tensor, suppressed: torch.Tensor,
                         beta: float | None, metrics: dict) -> torch.Tensor:
        """(N, P) bool: suppressed entries with score > Q_q3 + β·IQR."""
        q_low, q_high = quartiles(scores, self.q1, self.q3)
        threshold = q_high + beta * (q_high - q_low)
        metrics["harmony_threshold"] = threshold.tolist()
        return (scores > threshold[:, None]).logical_and_(suppressed)

    @torch.no_grad()
    def update_masks(self, ctx: MaskUpdateContext) -> dict[str, object]:
        grads, masks = ctx.task_grads, ctx.masks
        beta = self.beta(ctx.step, ctx.total_steps)
        metrics: dict[str, object] = {"beta": beta}
        mean_grad = grads.mean(dim=0)
        alignment = grads * mean_grad
        fisher = fisher_information(grads, masks, ctx.task_losses, self.log_fisher)
        scores = conflict_scores(
            alignment, fisher, self.fisher_weight * fisher_scale(alignment, fisher))
        active = masks == 1
        conflicting = self.select_conflicting(scores, active, beta, metrics)
        del scores
        if self.magnitude_harmony:
            alignment = harmony_scores(alignment, grads, mean_grad, self.alpha)
        recovered = self.select_recovered(alignment, active.logical_not_(), beta, metrics)
        del alignment
        if self.soft_masks:
            torch.where(conflicting, soft_mask_values(fisher), masks, out=masks)
        else:
            masks.masked_fill_(conflicting, 0.0)
        masks.masked_fill_(recovered, 1.0)
        metrics["conflicted"] = conflicting.count_nonzero(dim=1).tolist()
        metrics["recovered"] = recovered.count_nonzero(dim=1).tolist()
        return metrics


@register_method("socodt-hard", role="ablation", ablation_of="socodt", components="A+M", order=60)
class SoCoDTHard(SoCoDT):
    """Table 4 "A+M": TAMU with hard masks; conflicting entries are set to 0 (no soft value)."""

    soft_masks = False


@register_method("socodt-nomag", role="ablation", ablation_of="socodt", components="S+A", order=61)
class SoCoDTNoMag(SoCoDT):
    """Table 4 "S+A": recovery ranks suppressed entries by plain g_i⊙ḡ (no eq. 9–10 factor)."""

    magnitude_harmony = False
    unused_parameters = {"alpha": "it has no magnitude-sensitive harmony factor"}


@register_method("socodt-fixed", role="ablation", ablation_of="socodt", components="S+M", order=62)
class SoCoDTFixed(SoCoDT):
    """Table 4 "S+M": a fixed count per update instead of the IQR thresholds.

    Per task and update, k = min(``swap_count``, #active, #suppressed): the k active entries
    with the lowest conflict score get their soft value and the k suppressed entries with
    the highest harmony score return to 1, so every task keeps exactly its initial number
    of suppressed entries (the ERK budget, ``initial_sparsity``) all through training.
    β_t, q1 and q3 are not used.
    """

    unused_parameters = {name: "a fixed count replaces the IQR thresholds and β_t"
                         for name in ("beta_left_max", "beta_min", "beta_right_max", "q1", "q3")}

    # the paper gives no count; HarmoDT swaps k entries per update with k_max = 100 on the
    # paper model (the HarmoDT code), and a fixed count uses that maximum
    def __init__(self, swap_count: int = 100, **kwargs):
        super().__init__(**kwargs)
        if swap_count < 0:
            raise UserError(f"{self.name}: swap_count must be >= 0, got {swap_count}")
        self.swap_count = swap_count

    def beta(self, step: int, total_steps: int) -> None:
        return None

    def select_conflicting(self, scores, active, beta, metrics):
        return self._swap(scores, active, largest=False)

    def select_recovered(self, scores, suppressed, beta, metrics):
        return self._swap(scores, suppressed, largest=True)

    def _swap(self, scores: torch.Tensor, candidates: torch.Tensor,
              largest: bool) -> torch.Tensor:
        """Per row the k candidates with the lowest (or highest) scores, k as in the class doc
        (the same k for both sides: candidates here and the complement there)."""
        count = candidates.count_nonzero(dim=1)
        k = torch.minimum(count, candidates.shape[1] - count).clamp_(max=self.swap_count)
        return _extreme(scores, candidates, k, largest)


def _extreme(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor,
             largest: bool) -> torch.Tensor:
    """(N, P) bool: per row, the counts[i] candidates with the lowest (or highest) scores."""
    selected = torch.zeros_like(candidates)
    k = int(counts.max())
    if k == 0:
        return selected
    excluded = -math.inf if largest else math.inf
    index = scores.masked_fill(~candidates, excluded).topk(k, dim=1, largest=largest).indices
    keep = torch.arange(k, device=scores.device) < counts[:, None]
    return selected.scatter_(1, index, keep)
