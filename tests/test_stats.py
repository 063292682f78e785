"""Seed statistics on small arrays whose answers are known or computed independently."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from mtrl_bench.analysis import stats

RESAMPLES = 500


def test_summary_is_mean_and_sample_std_of_per_run_means():
    scores = np.array([[0.2, 0.4, 0.6], [0.3, 0.5, 0.7], [0.1, 0.1, 0.1]])
    per_run = scores.mean(axis=1)
    summary = stats.summarize(scores)
    assert summary.n == 3
    assert summary.mean == pytest.approx(per_run.mean())
    assert summary.std == pytest.approx(np.std(per_run, ddof=1))
    single = stats.summarize(scores[:1])
    assert single.n == 1 and single.std is None and single.mean == pytest.approx(0.4)


def test_welch_and_mann_whitney_match_scipy_and_refuse_one_seed():
    a = np.array([[0.8, 0.9], [0.7, 0.85], [0.75, 0.95]])
    b = np.array([[0.5, 0.6], [0.55, 0.5], [0.6, 0.65], [0.4, 0.5]])
    x, y = a.mean(axis=1), b.mean(axis=1)
    assert stats.welch_p(a, b) == pytest.approx(sps.ttest_ind(x, y, equal_var=False).pvalue)
    assert stats.mann_whitney_p(a, b) == pytest.approx(sps.mannwhitneyu(x, y).pvalue)
    assert stats.welch_p(a[:1], b) is None and stats.mann_whitney_p(a, b[:1]) is None
    constant = np.ones((3, 2))
    assert stats.welch_p(constant, constant) is None  # no variance anywhere: undefined, not 0


def test_difference_interval_is_welchs_over_per_run_means():
    rng = np.random.default_rng(0)
    task_levels = np.linspace(0.1, 0.9, 10)
    a = task_levels + 0.15 + rng.normal(0, 0.02, (5, 10))
    b = task_levels + rng.normal(0, 0.02, (4, 10))
    x, y = a.mean(axis=1), b.mean(axis=1)
    vx, vy = x.var(ddof=1) / 5, y.var(ddof=1) / 4
    df = (vx + vy) ** 2 / (vx ** 2 / 4 + vy ** 2 / 3)
    half = sps.t.ppf(0.975, df) * np.sqrt(vx + vy)
    interval = stats.mean_diff_ci(a, b)
    assert interval.estimate == pytest.approx(a.mean() - b.mean())
    assert (interval.low, interval.high) == pytest.approx((x.mean() - y.mean() - half,
                                                          x.mean() - y.mean() + half))
    assert interval.excludes_zero()
    assert stats.mean_diff_ci(a[:1], b).low is None  # one seed: undefined
    assert stats.mean_diff_ci(np.ones((3, 2)), np.ones((3, 2))).low is None  # no variance


def simulate(seeds: int, tasks: int, rng, shift: float = 0.05):
    """Two methods whose runs share a seed effect across all their tasks."""
    levels = rng.uniform(0.2, 0.8, tasks)

    def runs(offset):
        seed_effect = rng.normal(0, 0.06, (seeds, 1))  # one model per seed: moves every task
        return levels + offset + seed_effect + rng.normal(0, 0.03, (seeds, tasks))

    return runs(shift), runs(0.0)


def test_difference_interval_covers_at_its_nominal_rate_when_seeds_shift_all_tasks():
    """200 simulated 5-vs-5-seed comparisons: a 95% interval must cover the true difference
    in at least 90% of them (a per-task stratified bootstrap covered far less here)."""
    rng = np.random.default_rng(2026)
    covered = 0
    for _ in range(200):
        a, b = simulate(5, 30, rng)
        interval = stats.mean_diff_ci(a, b)
        covered += interval.low <= 0.05 <= interval.high
    assert covered >= 180, covered


def test_per_task_resampling_would_undercover():
    """The reason runs are the unit: resampling each task's seeds on its own averages the
    seed effect away and covers the true difference far less often."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(40):
        a, b = simulate(5, 30, rng)

        def statistic(*columns, axis=-1):
            means = np.stack([c.mean(axis=axis) for c in columns], axis=-1)
            return means[..., :30].mean(axis=-1) - means[..., 30:].mean(axis=-1)

        result = bootstrap(tuple(a.T) + tuple(b.T), statistic, n_resamples=200,
                           method="percentile", vectorized=True, rng=rng)
        covered += result.confidence_interval.low <= 0.05 <= result.confidence_interval.high
    assert covered < 30  # well under 95% of 40


def test_iqm_of_known_arrays():
    # Eight scores: the middle four are 3, 4, 5, 6.
    assert stats.iqm(np.array([[1, 2, 3, 4], [5, 6, 7, 8]])) == pytest.approx(4.5)
    assert stats.iqm(np.array([[0.0, 0.0, 1.0, 1.0]])) == pytest.approx(0.5)
    scores = np.array([[0.1, 0.5, 0.9, 0.3], [0.2, 0.6, 0.8, 0.4], [0.15, 0.55, 0.85, 0.35]])
    interval = stats.iqm_ci(scores, n_resamples=RESAMPLES, seed=0)
    assert interval.estimate == pytest.approx(sps.trim_mean(scores.ravel(), 0.25))
    assert interval.low <= interval.estimate <= interval.high
    # whole runs are resampled: every resample is the IQM of 3 drawn rows, all tasks kept
    draws = np.random.default_rng(0).integers(0, 3, size=(RESAMPLES, 3))
    values = [sps.trim_mean(scores[d].ravel(), 0.25) for d in draws]
    assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    assert stats.iqm_ci(scores[:1], n_resamples=RESAMPLES).low is None


def test_fdr_adjust_keeps_undefined_entries():
    adjusted = stats.fdr_adjust([0.01, None, 0.04, 0.5])
    expected = sps.false_discovery_control([0.01, 0.04, 0.5], method="bh")
    assert adjusted[1] is None
    assert [adjusted[0], adjusted[2], adjusted[3]] == pytest.approx(list(expected))
    assert stats.fdr_adjust([None]) == [None]


def test_compare_against_best_baseline():
    scores = {
        "promptdt": np.array([[0.3, 0.4], [0.35, 0.45]]),
        "harmodt-f": np.array([[0.5, 0.6], [0.55, 0.5], [0.6, 0.55]]),
        "socodt": np.array([[0.8, 0.9], [0.85, 0.8], [0.9, 0.85]]),
    }
    assert stats.best_method(scores, ["promptdt", "harmodt-f", "mtdt"]) == "harmodt-f"
    assert stats.best_method(scores, ["mtdt"]) is None
    # a single-seed baseline with a higher mean is not the reference while a testable one exists
    one_seed = {**scores, "harmodt-m": np.array([[0.7, 0.7]])}
    assert stats.best_method(one_seed, ["promptdt", "harmodt-f", "harmodt-m"]) == "harmodt-f"
    assert stats.best_method(one_seed, ["harmodt-m"]) == "harmodt-m"
    comparison = stats.compare(scores["socodt"], scores["harmodt-f"], "socodt", "harmodt-f")
    assert (comparison.n_method, comparison.n_baseline) == (3, 3)
    assert comparison.diff.estimate == pytest.approx(0.85 - 0.55)
    assert comparison.p_welch == pytest.approx(sps.ttest_ind(
        scores["socodt"].mean(1), scores["harmodt-f"].mean(1), equal_var=False).pvalue)


def test_mean_interval_is_a_t_interval_over_runs():
    scores = np.array([[0.2, 0.4], [0.3, 0.5], [0.1, 0.3], [0.4, 0.4]])
    per_run = scores.mean(axis=1)
    half = sps.t.ppf(0.975, 3) * per_run.std(ddof=1) / 2
    interval = stats.mean_ci(scores)
    assert (interval.low, interval.high) == pytest.approx((per_run.mean() - half,
                                                          per_run.mean() + half))
    assert stats.mean_ci(scores[:1]).low is None
