"""SoCo-DT (paper §4): each equation on hand-computed values, one update on planted
conflicts, the soft-mask semantics in a real model, and the three Table 4 ablations."""

import math
from pathlib import Path

import gin
import numpy as np
import pytest
import torch
from mtrl_bench.methods.socodt import (
    BELOW_ONE,
    SoCoDT,
    SoCoDTFixed,
    SoCoDTHard,
    SoCoDTNoMag,
    beta_schedule,
    conflict_scores,
    fisher_information,
    fisher_scale,
    harmony_factor,
    harmony_scores,
    paper_quantile,
    quantile_rank,
    soft_mask_values,
)

from mtrl_bench.errors import UserError
from mtrl_bench.method import (
    MaskUpdateContext,
    Method,
    build_method,
    get_method_class,
    gin_name,
)
from mtrl_bench.plan import plan_run
from mtrl_bench.training.masking import TaskMasks
from mtrl_bench.training.model import DecisionTransformer, PromptDTConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "methods"


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# --- eq. 5 and the Fisher scale -------------------------------------------------------------

def test_fisher_is_squared_masked_log_gradient():
    g = t([2.0, -4.0, 6.0], [1.0, 0.0, -3.0])
    m = t([1.0, 0.5, 0.0], [1.0, 1.0, 1.0])
    losses = torch.tensor([2.0, 0.5])
    # ((g / L) * M)^2: row 0 = (1, -2*0.5, 0)^2, row 1 = (2, 0, -6)^2
    assert torch.equal(fisher_information(g, m, losses), t([1.0, 1.0, 0.0], [4.0, 0.0, 36.0]))
    # HarmoDT's variant without the log: (g * M)^2
    assert torch.equal(fisher_information(g, m, losses, log=False),
                       t([4.0, 4.0, 0.0], [1.0, 0.0, 9.0]))
    # a task with zero loss has no log-gradient information: F = 0, not inf/nan
    zero = fisher_information(g, m, torch.tensor([0.0, 1.0]))
    assert torch.equal(zero[0], torch.zeros(3))


def test_fisher_scale_matches_total_alignment_mass():
    alignment = t([1.0, -2.0], [0.0, 1.0])  # sum |.| = 4
    fisher = t([1.0, 1.0], [0.0, 6.0])  # sum = 8
    assert fisher_scale(alignment, fisher) == 0.5
    assert fisher_scale(alignment, torch.zeros(2, 2)) == 0.0


def test_conflict_score_eq8():
    alignment = t([1.0, -2.0, 0.5])
    fisher = t([4.0, 2.0, 0.0])
    assert torch.equal(conflict_scores(alignment, fisher, 0.25), t([2.0, -1.5, 0.5]))


# --- eqs. 9-10 -------------------------------------------------------------------------------

def test_harmony_factor_and_score_eqs_9_10():
    mean_grad = torch.tensor([1.0, 1.0, -2.0, 0.0, 1.0])
    g = t([0.5, 3.0, -1.0, 5.0, -1.0])
    # alpha = 2: (2|gbar| - |g|) / (2|gbar|) = 1.5/2, -1/2 -> 0, 3/4, (gbar = 0) -> 0, 1/2
    h = harmony_factor(g, mean_grad, alpha=2.0)
    assert torch.equal(h, t([0.75, 0.0, 0.75, 0.0, 0.5]))
    alignment = g * mean_grad  # 0.5, 3, 2, 0, -1
    # positive alignment is scaled by H; zero and negative alignment pass unchanged
    assert torch.equal(harmony_scores(alignment, g, mean_grad, alpha=2.0),
                       t([0.375, 0.0, 1.5, 0.0, -1.0]))


def test_harmony_is_finite_where_mean_gradient_is_zero():
    g = t([0.0, 3.0], [0.0, -3.0])
    mean_grad = g.mean(dim=0)  # exactly zero
    assert torch.equal(harmony_factor(g, mean_grad, 20.0), torch.zeros(2, 2))
    assert torch.equal(harmony_scores(g * mean_grad, g, mean_grad, 20.0), torch.zeros(2, 2))


# --- eq. 11 ----------------------------------------------------------------------------------

def test_quantile_with_integer_rank_is_an_order_statistic():
    x = t([5.0, 1.0, 4.0, 2.0, 3.0], [10.0, 30.0, 20.0, 50.0, 40.0])
    assert torch.equal(paper_quantile(x, 0.4), torch.tensor([2.0, 20.0]))  # k = 2
    assert torch.equal(paper_quantile(x, 0.8), torch.tensor([4.0, 40.0]))  # k = 4
    assert torch.equal(paper_quantile(x, 1.0), torch.tensor([5.0, 50.0]))  # k = n


def test_quantile_with_fractional_rank_interpolates():
    x = t([5.0, 1.0, 4.0, 2.0, 3.0], [10.0, 30.0, 20.0, 50.0, 40.0])
    # q = 0.3: k = 1.5, gamma = 0.5 -> 0.5*X(1) + 0.5*X(2) (the smaller-side topk)
    assert torch.equal(paper_quantile(x, 0.3), torch.tensor([1.5, 15.0]))
    # q = 0.86: k = 4.3, gamma = 0.3 -> 0.7*X(4) + 0.3*X(5) (the larger-side topk)
    torch.testing.assert_close(paper_quantile(x, 0.86), torch.tensor([4.3, 43.0]))
    # k = q*n below 1 has no X_(k): clamped to the minimum
    assert torch.equal(paper_quantile(x, 0.1), torch.tensor([1.0, 10.0]))


def test_quantile_handles_ties_and_float_error_in_the_rank():
    x = t([3.0, 1.0, 3.0, 3.0, 0.0, 9.0])
    assert torch.equal(paper_quantile(x, 0.5), torch.tensor([3.0]))  # X(3) = 3 (tied)
    assert quantile_rank(0.07, 100) == 7.0  # 0.07 * 100 = 7.000000000000001 in floats
    assert quantile_rank(0.05, 4_738_560) == 236_928.0
    assert quantile_rank(0.001, 10) == 1.0
    assert quantile_rank(0.25, 10) == 2.5


def test_quantile_equals_sorted_reference_on_random_rows():
    x = torch.randn(4, 997, generator=torch.Generator().manual_seed(0))
    ordered = x.sort(dim=1).values
    for q in (0.05, 0.25, 0.5, 0.95, 0.999):
        k = q * 997
        lo, hi = ordered[:, math.floor(k) - 1], ordered[:, math.ceil(k) - 1]
        gamma = k - math.floor(k)
        assert torch.equal(paper_quantile(x, q), (1 - gamma) * lo + gamma * hi)


# --- eqs. 15-16 ------------------------------------------------------------------------------

def test_asymmetric_cosine_beta_schedule():
    total = 1000
    expected = {0: 20.0, 250: 12.5, 500: 5.0, 750: 17.5, 1000: 30.0}
    for step, beta in expected.items():
        assert beta_schedule(step, total, 20.0, 5.0, 30.0) == pytest.approx(beta, abs=1e-12)
    # just past T/2 the right branch takes over (continuous at the minimum)
    assert beta_schedule(501, total, 20.0, 5.0, 30.0) == pytest.approx(
        5.0 + 12.5 * (1 + math.cos(2 * math.pi * 0.501)))
    assert SoCoDT().beta(250, 1000) == pytest.approx(12.5)
    with pytest.raises(ValueError):
        beta_schedule(0, 0, 20.0, 5.0, 30.0)


# --- eq. 17 ----------------------------------------------------------------------------------

def test_soft_values_are_min_max_normalised_fisher_below_one():
    soft = soft_mask_values(t([0.0, 2.0, 4.0, 8.0], [3.0, 3.0, 3.0, 3.0]))
    # row 0: (F - 0)/8, the argmax capped just below 1 so it does not stay active;
    # row 1: F_max = F_min gives 0 (no importance information)
    assert torch.equal(soft, t([0.0, 0.25, 0.5, BELOW_ONE], [0.0, 0.0, 0.0, 0.0]))
    assert BELOW_ONE < 1.0 and torch.tensor(BELOW_ONE) < 1


# --- thresholds, eqs. 13-14 ------------------------------------------------------------------

def test_no_entry_past_the_thresholds_when_scores_are_equal():
    method = SoCoDT()
    scores = torch.ones(2, 40)
    everything = torch.ones(2, 40, dtype=torch.bool)
    metrics = {}
    assert not method.select_conflicting(scores.clone(), everything, 5.0, metrics).any()
    assert not method.select_recovered(scores.clone(), everything, 5.0, metrics).any()
    assert metrics["conflict_threshold"] == [1.0, 1.0]  # IQR = 0 -> threshold = Q_q1


def test_every_candidate_past_the_thresholds():
    method = SoCoDT(q1=0.375, q3=0.625)
    # 8 entries; quantiles over all of them: Q_q1 = X(3) = 0, Q_q3 = X(5) = 0, IQR = 0
    scores = t([-3.0, -2.0, 0.0, 0.0, 0.0, 0.0, 4.0, 5.0])
    low, high = scores < 0, scores > 0
    # every active entry (the two negative ones) lies below 0 - beta * 0
    assert torch.equal(method.select_conflicting(scores.clone(), low, 5.0, {}), low)
    # every suppressed entry (the two positive ones) lies above 0 + beta * 0
    assert torch.equal(method.select_recovered(scores.clone(), high, 5.0, {}), high)
    # the candidate sets restrict the selection: nothing outside them is touched
    assert not method.select_conflicting(scores.clone(), high, 5.0, {}).any()


# --- a whole update on planted conflicts -----------------------------------------------------

def planted_update_inputs():
    """4 tasks x 100 entries; gbar = 1 except in the planted columns.

    * (0, 10): task 0 pulls hard against everyone (g = -100)           -> conflicting
    * (3, 30): task 3 opposes a shared direction (g = -2)              -> conflicting
    * (2, 20): soft-masked for task 2, strongly aligned (g = 10)        -> recovered
    * (1, 10): suppressed for task 1, aligned but 102 x gbar: the
      magnitude factor H is 0, so SoCo-DT does NOT recover it (plain g*gbar would)
    Background entries have g in [0.9, 1.1]; each task has 5 suppressed ones.
    """
    n, p = 4, 100
    w = torch.linspace(-1.0, 1.0, p)
    grads = 1.0 + 0.1 * torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * w
    grads[:, 10] = torch.tensor([-100.0, 102.0, 1.0, 1.0])
    grads[:, 20] = torch.tensor([1.0, 1.0, 10.0, 1.0])
    grads[:, 30] = torch.tensor([2.0, 2.0, 2.0, -2.0])
    grads[:, 40] = torch.tensor([1.0, 1.0, 1.0, 9.0])  # task 3's largest Fisher entry
    masks = torch.ones(n, p)
    masks[:, 90:95] = 0.0
    masks[1, 10] = 0.0
    masks[2, 20] = 0.5
    losses = torch.tensor([1.0, 2.0, 0.5, 1.0])
    return grads, masks, losses


def run_update(method, grads, masks, losses, step=500, total=1000):
    masks = masks.clone()
    ctx = MaskUpdateContext(
        step=step, total_steps=total, masks=masks, task_grads=grads, task_losses=losses,
        theta=torch.zeros(masks.shape[1]), segments=[], generator=torch.Generator(),
    )
    return masks, method.update_masks(ctx)


def changed(before, after):
    return {tuple(i) for i in (before != after).nonzero().tolist()}


def test_update_masks_planted_conflicts_and_recovers_planted_harmony():
    grads, masks, losses = planted_update_inputs()
    grads_before = grads.clone()
    after, metrics = run_update(SoCoDT(), grads, masks, losses)  # t = T/2: beta = beta_min
    assert torch.equal(grads, grads_before)  # the trainer's gradient buffer is untouched
    assert changed(masks, after) == {(0, 10), (3, 30), (2, 20)}
    # task 0's conflicting entry is its largest-Fisher entry: soft value just below 1
    assert after[0, 10] == BELOW_ONE
    # task 3: (F - 0) / (81 - 0) with F = (-2)^2 and 81 = 9^2 at column 40
    assert after[3, 30] == torch.tensor(4.0) / torch.tensor(81.0)
    assert after[2, 20] == 1.0 and after[1, 10] == 0.0
    assert metrics["beta"] == 5.0
    assert metrics["conflicted"] == [1, 0, 0, 1]
    assert metrics["recovered"] == [0, 0, 1, 0]
    summary = Method.mask_metrics(after)
    assert summary["sparsity"] == pytest.approx([0.06, 0.06, 0.05, 0.06])
    assert summary["soft_share"] == pytest.approx([0.01, 0.0, 0.0, 0.01])
    assert summary["mean_soft_value"][3] == pytest.approx(4 / 81)  # the one soft entry
    assert summary["mean_soft_value"][1] is None  # no soft entries: undefined, not 0
    assert len(metrics["conflict_threshold"]) == len(metrics["harmony_threshold"]) == 4
    assert sum(metrics["conflict_hist"]["counts"]) == 400  # every entry of every task


def test_conflict_histogram_bins_scores_in_score_units():
    """The logged histogram counts each score in the signed log10 bin that holds it."""
    from mtrl_bench.method import signed_log_histogram
    from mtrl_bench.runs.rundir import histogram_edges

    rng = np.random.default_rng(0)
    values = rng.choice([-1.0, 1.0], 5000) * 10.0 ** rng.uniform(-25, 3, 5000)
    values[:7] = 0.0
    record = signed_log_histogram(torch.tensor(values, dtype=torch.float64).reshape(50, 100))
    edges = np.array(histogram_edges(record["low"], record["high"], record["per_decade"]))
    clipped = np.sign(values) * np.clip(np.abs(values), 10.0 ** -22, 10.0 ** 2)
    clipped[np.abs(values) <= 1e-22] = 0.0  # the zero bin
    expected = np.histogram(clipped, bins=edges)[0]
    counts = np.zeros(len(edges) - 1, dtype=int)
    counts[record["first"]:record["first"] + len(record["counts"])] = record["counts"]
    # np.histogram's bins are half-open [a, b) like histc's, up to float rounding at edges
    assert counts.sum() == 5000 and np.abs(counts - expected).sum() <= 4
    assert counts[len(counts) // 2] == 7 + np.sum((np.abs(values) <= 1e-22) & (values != 0))


def test_update_with_zero_mean_gradient_changes_nothing():
    grads = t([1.0, -2.0, 3.0, 0.0], [-1.0, 2.0, -3.0, 0.0])  # gbar = 0 everywhere
    masks = t([1.0, 1.0, 0.0, 0.5], [0.0, 1.0, 1.0, 1.0])
    after, metrics = run_update(SoCoDT(q1=0.25, q3=0.75), grads, masks, torch.ones(2))
    # no alignment anywhere: all scores 0, IQR 0, nothing strictly past either threshold
    assert torch.equal(after, masks)
    assert metrics["conflict_threshold"] == metrics["harmony_threshold"] == [0.0, 0.0]


def test_log_free_fisher_changes_only_the_fisher_term():
    grads, masks, losses = planted_update_inputs()
    # every task has L = 1: the log changes nothing
    ones = torch.ones(4)
    a, ma = run_update(SoCoDT(log_fisher=True), grads, masks, ones)
    b, mb = run_update(SoCoDT(log_fisher=False), grads, masks, ones)
    assert torch.equal(a, b) and ma == mb
    # with different losses the conflict scores (and so the thresholds) differ
    _, mc = run_update(SoCoDT(log_fisher=True), grads, masks, losses)
    _, md = run_update(SoCoDT(log_fisher=False), grads, masks, losses)
    assert mc["conflict_threshold"] != md["conflict_threshold"]


# --- the ablations differ only in their component --------------------------------------------

def test_hard_ablation_zeroes_the_same_conflicting_entries():
    grads, masks, losses = planted_update_inputs()
    soft, soft_metrics = run_update(SoCoDT(), grads, masks, losses)
    hard, hard_metrics = run_update(SoCoDTHard(), grads, masks, losses)
    assert changed(soft, hard) == {(0, 10), (3, 30)}
    assert hard[0, 10] == 0.0 and hard[3, 30] == 0.0
    for key in ("beta", "conflicted", "recovered", "conflict_threshold", "harmony_threshold",
                "conflict_hist"):
        assert hard_metrics[key] == soft_metrics[key]


def test_nomag_ablation_recovers_by_plain_alignment():
    grads, masks, losses = planted_update_inputs()
    soft, soft_metrics = run_update(SoCoDT(), grads, masks, losses)
    plain, plain_metrics = run_update(SoCoDTNoMag(), grads, masks, losses)
    # only recovery differs: the magnitude-dominated entry (1, 10) now comes back
    assert changed(soft, plain) == {(1, 10)} and plain[1, 10] == 1.0
    assert plain_metrics["recovered"] == [0, 1, 1, 0]
    for key in ("beta", "conflicted", "conflict_threshold", "conflict_hist"):
        assert plain_metrics[key] == soft_metrics[key]


def test_fixed_ablation_swaps_a_fixed_count_and_keeps_the_sparsity():
    grads, masks, losses = planted_update_inputs()
    soft, _ = run_update(SoCoDT(), grads, masks, losses)
    fixed, metrics = run_update(SoCoDTFixed(swap_count=1), grads, masks, losses)
    assert metrics["beta"] is None and "conflict_threshold" not in metrics
    assert metrics["conflicted"] == metrics["recovered"] == [1, 1, 1, 1]
    assert torch.equal((fixed < 1).sum(dim=1), (masks < 1).sum(dim=1))  # budget kept
    # the lowest conflict score among active entries, with the same soft value as socodt
    assert fixed[0, 10] == soft[0, 10] and fixed[3, 30] == soft[3, 30]
    # the highest harmony score among suppressed entries (task 1's magnitude-dominated
    # entry has harmony 0, so a background entry is recovered instead)
    assert fixed[2, 20] == 1.0 and fixed[1, 10] == 0.0
    # one entry masked and one recovered per task, nothing else touched
    swapped = changed(masks, fixed)
    assert {(0, 10), (3, 30), (2, 20)} <= swapped and len(swapped) == 8
    unchanged, _ = run_update(SoCoDTFixed(swap_count=0), grads, masks, losses)
    assert torch.equal(unchanged, masks)


def test_fixed_count_is_capped_by_the_available_entries():
    masks = t([1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    grads = t([1.0, -1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0])
    after, metrics = run_update(SoCoDTFixed(swap_count=5), grads, masks, torch.ones(2))
    # task 0 has one suppressed entry: one swap; task 1 has none: no swap
    assert metrics["conflicted"] == metrics["recovered"] == [1, 0]
    assert after[0, 3] == 1.0 and after[0, 1] < 1.0 and torch.equal(after[1], masks[1])


# --- registry, gin, initial masks ------------------------------------------------------------

def test_methods_are_registered_and_ablations_read_socodts_bindings():
    names = {"socodt": SoCoDT, "socodt-hard": SoCoDTHard, "socodt-fixed": SoCoDTFixed,
             "socodt-nomag": SoCoDTNoMag}
    for name, cls in names.items():
        assert get_method_class(name) is cls
    try:
        gin.clear_config()
        gin.add_config_file_search_path(str(CONFIGS.parent))
        for name, cls in names.items():
            gin.parse_config_file(str(CONFIGS / f"{name}.gin"))
            assert vars(build_method(name)) == vars(cls())  # the files bind no default
    finally:
        gin.clear_config()
    # one socodt.* binding changes socodt and every ablation alike; an ablation's own wins
    for name in names:
        args = plan_run(name, "tiny", bindings=["socodt.fisher_weight = 0.5"]).arguments
        assert args[gin_name(name)]["fisher_weight"] == 0.5
    args = plan_run("socodt-fixed", "tiny", bindings=[
        "socodt.fisher_weight = 0.5", "socodt_fixed.fisher_weight = 0.3",
        "socodt_fixed.swap_count = 3"]).arguments["socodt_fixed"]
    assert (args["fisher_weight"], args["swap_count"]) == (0.3, 3)
    assert plan_run("random-masks", "tiny", bindings=["socodt.initial_sparsity = 0.3"]
                    ).arguments["random_masks"]["initial_sparsity"] == 0.3
    with pytest.raises(UserError, match=r"socodt.alpha has no effect: random_masks \(which "
                       r"reads the socodt.\* bindings of its own parameters\) has no "
                       r"parameter 'alpha'"):
        plan_run("random-masks", "tiny", bindings=["socodt.alpha = 3.0"])


def test_bad_hyperparameters_are_user_errors():
    with pytest.raises(UserError, match="q1"):
        SoCoDT(q1=0.9, q3=0.1)
    with pytest.raises(UserError, match="swap_count"):
        SoCoDTFixed(swap_count=-1)


def test_initial_masks_are_random_erk_at_sparsity_0_2():
    model = DecisionTransformer(PromptDTConfig(n_layer=2, n_embd=32, n_head=2, n_inner=64))
    masks = SoCoDT().initial_masks(3, model.mask_segments, model.maskable_flat(),
                                   torch.Generator().manual_seed(0))
    assert masks.shape == (3, model.num_maskable)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert (masks < 1).float().mean(dim=1).tolist() == pytest.approx([0.2] * 3, abs=1e-3)
    assert not torch.equal(masks[0], masks[1])


# --- soft masks in the model -----------------------------------------------------------------

def test_soft_masks_drop_entries_from_forward_and_scale_gradients():
    torch.manual_seed(0)
    cfg = PromptDTConfig(n_layer=1, n_embd=16, n_head=2, n_inner=32, dropout=0.0,
                         context_len=3, prompt_len=2)
    model = DecisionTransformer(cfg)
    n, b, k, kp = 3, 2, 3, 2

    def rnd(*shape):
        return torch.randn(*shape)

    batch = dict(states=rnd(n, b, k, 39), actions=rnd(n, b, k, 4),
                 returns_to_go=rnd(n, b, k, 1), timesteps=torch.randint(0, 500, (n, b, k)),
                 attention_mask=torch.ones(n, b, k))
    prompt = dict(states=rnd(n, 1, kp, 39), actions=rnd(n, 1, kp, 4),
                  returns_to_go=rnd(n, 1, kp, 1), timesteps=torch.randint(0, 500, (n, 1, kp)),
                  attention_mask=torch.ones(n, 1, kp))
    target = rnd(n, b, k, 4).clamp(-0.9, 0.9)
    # beta = 0 and wide quantiles so that a quarter of the active entries conflict
    method = SoCoDT(beta_left_max=0.0, beta_min=0.0, beta_right_max=0.0, q1=0.25, q3=0.75)
    gen = torch.Generator().manual_seed(0)
    masks = TaskMasks(method.initial_masks(n, model.mask_segments, model.maskable_flat(), gen),
                      model.mask_segments)

    def losses():
        model.zero_grad()
        pred = model(**batch, prompt=prompt, masks=masks)
        per_task = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        per_task.mean().backward()
        return pred.detach(), per_task.detach()

    grads = masks.start_capture(scale=n)
    _, task_losses = losses()
    masks.stop_capture()
    method.update_masks(MaskUpdateContext(
        step=1, total_steps=10, masks=masks.values, task_grads=grads, task_losses=task_losses,
        theta=model.maskable_flat(), segments=model.mask_segments, generator=gen))
    masks.refresh()
    soft = (masks.values > 0) & (masks.values < 1)
    assert soft.sum(dim=1).min() > 0  # every task now has soft-masked entries

    grads = masks.start_capture(scale=n)
    pred, _ = losses()
    masks.stop_capture()
    # backward: theta.grad = mean_i g_i * M_i, soft entries included at their soft value
    theta_grad = torch.cat([p.grad.reshape(-1) for _, p in model.maskable_parameters()])
    torch.testing.assert_close(theta_grad, (grads * masks.values).mean(dim=0))
    binary_grad = (grads * masks.binary).mean(dim=0)
    assert not torch.allclose(theta_grad, binary_grad)
    assert (grads[soft] != 0).any()

    # forward: task 0 does not see its suppressed entries, whatever their value
    suppressed0 = masks.values[0] < 1
    with torch.no_grad():
        flat = model.maskable_flat()
        flat[suppressed0] += 10.0
        offset = 0
        for _, param in model.maskable_parameters():
            param.copy_(flat[offset:offset + param.numel()].view_as(param))
            offset += param.numel()
        moved = model(**batch, prompt=prompt, masks=masks)
    assert torch.equal(moved[0], pred[0])
    assert not torch.allclose(moved[1], pred[1])  # other tasks use some of those entries



def test_random_masks_start_as_socodt_and_never_change(tmp_path):
    """The control: the same initial masks as socodt for a seed, then no TAMU at all."""
    from mtrl_bench.data.generation import ensure_suite_dataset
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

    data = ensure_suite_dataset(["reach-v3", "button-press-v3"], "near-optimal",
                                data_dir=tmp_path, episodes=4, episode_length=30, workers=1,
                                progress=False)
    config = PromptDTConfig(n_layer=1, n_embd=16, n_head=2, n_inner=32, context_len=4,
                            prompt_len=2)

    def trainer(method):
        return Trainer(data, build_method(method, update_interval=2), total_steps=9,
                       batch_size=2, warmup_steps=1, device="cpu", seed=4, model_config=config,
                       log_every=1000)

    socodt, control = trainer("socodt"), trainer("random-masks")
    assert torch.equal(socodt.masks.values, control.masks.values)
    start = control.masks.values.clone()
    records = []
    control.train(callback=records.append)
    assert torch.equal(control.masks.values, start)
    masks = [r for r in records if r["kind"] == "mask"]
    assert len(masks) == 4 and all(r["conflicted"] == [0, 0] == r["recovered"] for r in masks)
    assert masks[-1]["sparsity"] == pytest.approx([0.2, 0.2], abs=1e-3)
