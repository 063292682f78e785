"""HarmoDT (Hu et al. 2024): binary per-task masks at fixed sparsity, pruned and regrown.

Every ``update_interval`` steps, per task i (all tasks at once, top-k on (N, P) rows):

* prune the k active entries with the lowest ``agreement_weight * (ḡ ⊙ g_i) + F_i``,
  F_i = g_i² (``fisher``, HarmoDT-F), |θ| (``magnitude``, HarmoDT-M) or 0 (``none``, HarmoDT-R);
* regrow the k inactive entries with the highest ``ḡ ⊙ g_i``;
* k = int(k_max − ½·k_max·(1 + cos(2π·t/T))): 0 → k_max → 0 over training,

so every task keeps its number of active entries. Masks start as independent random ERK
masks at ``sparsity`` (HarmoDT: 0.2).

g_i is task i's gradient w.r.t. its effective weights θ ⊙ M_i, captured in the training
step's own backward pass, and ḡ is the mean of those g_i over all tasks. Deliberate
differences from the reference code (github.com/charleshsc/HarmoDT; README "Deviations
from the papers"): the reference draws a separate batch of 8 per task for the update,
clips each g_i to norm 0.25 and multiplies it by M_i before scoring, so its ḡ on an entry
averages only the tasks that use it. Multiplying by M_i makes ḡ ⊙ g_i zero on every
inactive entry, so the reference's regrowth picks among ties; the unclipped, unmasked g_i
used here ranks inactive entries by how much the task wants them back (as RigL does). The
reference also overwrites the first task's g_i with ḡ (a bug, not copied).
"""

from __future__ import annotations

import math

import torch

from mtrl_bench.method import MaskUpdateContext, register_method

from .erk import ERK_SPARSITY, ERKMaskMethod

SCORE_TERMS = ("fisher", "magnitude", "none")


def prune_count(step: int, total_steps: int, k_max: int) -> int:
    """HarmoDT's cosine schedule: 0 at t = 0, k_max at t = T/2, 0 again at t = T."""
    return int(k_max - 0.5 * k_max * (1.0 + math.cos(2.0 * math.pi * step / total_steps)))


class HarmoDT(ERKMaskMethod):
    """HarmoDT: binary ERK masks, prune by harmony score + term, regrow by harmony score."""

    #: the extra prune-score term, one of SCORE_TERMS; each registered variant fixes its own
    #: (a class option, not a gin parameter, so a method key always means one variant)
    score_term = "fisher"
    sparsity_parameter = "sparsity"  # HarmoDT's name; the others say initial_sparsity

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.score_term not in SCORE_TERMS:
            raise ValueError(f"score_term must be one of {SCORE_TERMS}, not {cls.score_term!r}")

    def __init__(
        self,
        # the runner derives it from Run.mask_update_every_sequences (HarmoDT: every 500
        # iterations of 8 sequences = 4000 sequences; 10 steps on MT50 at B = 8)
        update_interval: int = 10,
        # the HarmoDT code: random ERK masks per task at sparsity 0.2
        sparsity: float = ERK_SPARSITY,
        # the HarmoDT code: k = int(k_max - k_max/2 (1 + cos(2 pi t / T))), k_max = 100
        k_max: int = 100,
        # the HarmoDT code: prune score 10 * (gbar * g_i) + term
        agreement_weight: float = 10.0,
    ):
        super().__init__(update_interval, sparsity)
        self.k_max = k_max
        self.agreement_weight = agreement_weight

    def _term(self, g: torch.Tensor, theta: torch.Tensor) -> torch.Tensor | float:
        if self.score_term == "fisher":
            return g.square()
        if self.score_term == "magnitude":
            return theta.abs()
        return 0.0

    def update_masks(self, ctx: MaskUpdateContext) -> dict[str, object]:
        masks, g = ctx.masks, ctx.task_grads
        active = masks == 1
        num_active = active.sum(dim=1)
        k = prune_count(ctx.step, ctx.total_steps, self.k_max)
        # never more than a row has on either side (one sync per update)
        k = min(k, int(torch.minimum(num_active, masks.shape[1] - num_active).min()))
        if k > 0:
            agreement = g * g.mean(dim=0)
            prune_score = self.agreement_weight * agreement + self._term(g, ctx.theta)
            prune_score.masked_fill_(~active, math.inf)
            pruned = prune_score.topk(k, dim=1, largest=False).indices
            del prune_score
            regrown = agreement.masked_fill_(active, -math.inf).topk(k, dim=1).indices
            masks.scatter_(1, pruned, 0.0)
            masks.scatter_(1, regrown, 1.0)
        counts = [k] * masks.shape[0]
        return {"k": k, "conflicted": counts, "recovered": counts}


@register_method("harmodt-f", role="baseline", order=20)
class HarmoDTFisher(HarmoDT):
    """HarmoDT-F: prune by 10·ḡ⊙g_i + g_i² (Fisher term), regrow by ḡ⊙g_i (Hu et al. 2024)."""

    score_term = "fisher"


@register_method("harmodt-m", role="baseline", order=21)
class HarmoDTMagnitude(HarmoDT):
    """HarmoDT-M: prune by 10·ḡ⊙g_i + |θ| (magnitude term), regrow by ḡ⊙g_i (Hu et al. 2024)."""

    score_term = "magnitude"


@register_method("harmodt-r", role="baseline", order=22)
class HarmoDTRandom(HarmoDT):
    """HarmoDT-R: prune by 10·ḡ⊙g_i alone, regrow by ḡ⊙g_i (Hu et al. 2024)."""

    score_term = "none"
