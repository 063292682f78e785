"""HarmoDT's mask update on a hand-built example, its k schedule and its invariants."""

import math

import pytest
import torch
from mtrl_bench.methods.harmodt import prune_count

from mtrl_bench.errors import UserError
from mtrl_bench.method import MaskUpdateContext, build_method
from mtrl_bench.training.masking import MaskSegment

# Two tasks, eight entries. gbar = mean(g0, g1) = [0.1, 0.3, 0.25, 1, 0.1, 1, 1, 1].
G0 = [-1.0, -0.3, -0.2, 0.01, 0.2, 0.3, -0.4, 0.8]
G1 = [1.2, 0.9, 0.7, 1.99, 0.0, 1.7, 2.4, 1.2]
THETA = [0.01, 2.0, 0.05, 0.03, 0.5, 3.0, 0.1, 0.2]
MASKS = [[1, 1, 1, 1, 1, 0, 0, 0],  # task 0: active 0-4
         [0, 0, 1, 1, 0, 1, 1, 1]]  # task 1: active 2, 3, 5, 6, 7
# Task 0, prune scores 10*(gbar*g0) + term over its active entries 0-4:
#   none:      [-1.00, -0.90, -0.50, 0.10, 0.20]  -> prune 0, 1
#   fisher:    [ 0.00, -0.81, -0.46, 0.10, 0.24]  -> prune 1, 2   (+ g0^2)
#   magnitude: [-0.99,  1.10, -0.45, 0.13, 0.70]  -> prune 0, 2   (+ |theta|)
# regrow the highest gbar*g0 among 5-7 ([0.3, -0.4, 0.8]) -> 7, 5.
# Task 1: prune 2 and 7 under every term (10*gbar*g1 = [1.75, 19.9, 17, 24, 12] on 2,3,5,6,7),
# regrow the highest gbar*g1 among 0, 1, 4 ([0.12, 0.27, 0.0]) -> 1, 0.
EXPECTED = {
    "harmodt-r": [[0, 0, 1, 1, 1, 1, 0, 1], [1, 1, 0, 1, 0, 1, 1, 0]],
    "harmodt-f": [[1, 0, 0, 1, 1, 1, 0, 1], [1, 1, 0, 1, 0, 1, 1, 0]],
    "harmodt-m": [[0, 1, 0, 1, 1, 1, 0, 1], [1, 1, 0, 1, 0, 1, 1, 0]],
}


def _context(masks, grads, theta, step, total_steps):
    return MaskUpdateContext(
        step=step, total_steps=total_steps, masks=masks, task_grads=grads,
        task_losses=torch.ones(masks.shape[0]), theta=theta,
        segments=[MaskSegment("w", (masks.shape[1],), 0)], generator=torch.Generator(),
    )


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_hand_built_update_prunes_and_regrows_the_expected_entries(method):
    instance = build_method(method, k_max=2)
    masks = torch.tensor(MASKS, dtype=torch.float32)
    grads = torch.tensor([G0, G1], dtype=torch.float64)
    metrics = instance.update_masks(_context(masks, grads,
                                             torch.tensor(THETA, dtype=torch.float64),
                                             step=50, total_steps=100))  # t = T/2: k = 2
    assert masks.tolist() == EXPECTED[method]
    assert metrics["k"] == 2


def test_no_change_when_k_is_zero():
    method = build_method("harmodt-f", k_max=100)
    masks = torch.tensor(MASKS, dtype=torch.float32)
    method.update_masks(_context(masks, torch.tensor([G0, G1]), torch.tensor(THETA), 0, 100))
    assert masks.tolist() == MASKS


def test_cosine_schedule_rises_to_k_max_and_falls_back():
    total, k_max = 1000, 100
    ks = [prune_count(t, total, k_max) for t in range(total + 1)]
    assert ks[0] == 0 and ks[total // 2] == k_max and ks[total] == 0
    assert ks[total // 4] in (49, 50)  # k_max / 2 up to the int() truncation
    assert all(a <= b for a, b in zip(ks[: total // 2], ks[1 : total // 2 + 1]))
    assert all(a >= b for a, b in zip(ks[total // 2 :], ks[total // 2 + 1 :]))
    assert all(abs(ks[t] - ks[total - t]) <= 1 for t in range(total + 1))
    exact = k_max / 2 * (1 - math.cos(2 * math.pi * 100 / total))  # t = 100: 9.55
    assert ks[100] == int(exact)


@pytest.mark.parametrize("method", ["harmodt-f", "harmodt-m", "harmodt-r"])
def test_random_updates_keep_active_counts_and_move_exactly_k(method):
    gen = torch.Generator().manual_seed(0)
    n, p, total = 4, 500, 40
    method = build_method(method, k_max=30)
    masks = (torch.rand(n, p, generator=gen) > 0.3).float()
    counts = masks.sum(1)
    theta = torch.randn(p, generator=gen)
    for step in range(1, total):
        before = masks.clone()
        grads = torch.randn(n, p, generator=gen)
        k = method.update_masks(_context(masks, grads, theta, step, total))["k"]
        assert k == prune_count(step, total, 30)
        assert torch.equal(masks.sum(1), counts)
        pruned = (before == 1) & (masks == 0)
        regrown = (before == 0) & (masks == 1)
        assert (pruned.sum(1) == k).all() and (regrown.sum(1) == k).all()
        if k:  # the regrown entries are the k inactive ones with the highest gbar * g_i
            agreement = grads * grads.mean(0)
            best = agreement.masked_fill(before == 1, -math.inf).topk(k, dim=1).indices
            assert torch.equal(regrown, torch.zeros_like(regrown).scatter_(1, best, True))


def test_erk_initial_masks_at_sparsity():
    method = build_method("harmodt-f")
    segments = [MaskSegment("a", (64, 32), 0), MaskSegment("b", (64,), 2048),
                MaskSegment("c", (128, 64), 2112)]
    gen = torch.Generator().manual_seed(1)
    masks = method.initial_masks(3, segments, torch.zeros(10304), gen)
    assert masks.shape == (3, 10304)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(1 - masks.mean(1), torch.full((3,), 0.2), atol=1e-3)
    assert not torch.equal(masks[0], masks[1])  # independent per task


def test_an_out_of_range_sparsity_is_named_as_the_method_spells_it():
    """One check for every ERK method (methods/erk.py), in each one's own words."""
    with pytest.raises(UserError, match="harmodt-f: sparsity must be in"):
        build_method("harmodt-f", sparsity=1.5)
    with pytest.raises(UserError, match="random-masks: initial_sparsity must be in"):
        build_method("random-masks", initial_sparsity=-0.1)
