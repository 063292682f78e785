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


# ------------------------------------------------------------ rliable's aggregate metrics


def _two_methods(seed=0):
    rng = np.random.default_rng(seed)
    x = np.round(np.clip(rng.uniform(0.2, 0.9, (5, 6)), 0, 1) * 50) / 50  # ties happen
    y = np.round(np.clip(rng.uniform(0.1, 0.8, (4, 6)), 0, 1) * 50) / 50
    return x, y


def test_probability_of_improvement_counts_run_pairs_per_task():
    """Independent: per task, the Mann-Whitney U statistic of X over Y / (n_x n_y) (scipy),
    and the explicit double loop over run pairs, ties one half; averaged over tasks."""
    x, y = _two_methods()
    by_scipy = np.mean([sps.mannwhitneyu(x[:, t], y[:, t]).statistic / (5 * 4)
                        for t in range(6)])
    by_loop = np.mean([[(a > b) + 0.5 * (a == b) for a in x[:, t] for b in y[:, t]]
                       for t in range(6)])
    assert stats.probability_of_improvement(x, y) == pytest.approx(by_scipy)
    assert stats.probability_of_improvement(x, y) == pytest.approx(by_loop)
    assert stats.probability_of_improvement(x, x) == pytest.approx(0.5)
    assert stats.probability_of_improvement(x + 2, y) == 1.0


def test_aggregate_metrics_equal_rliables():
    metrics = pytest.importorskip("rliable.metrics")  # its bootstrap module needs arch
    x, y = _two_methods(1)
    assert stats.probability_of_improvement(x, y) == pytest.approx(
        metrics.probability_of_improvement(x, y))
    assert stats.optimality_gap(x) == pytest.approx(metrics.aggregate_optimality_gap(x))
    assert stats.iqm(x) == pytest.approx(metrics.aggregate_iqm(x))


def test_optimality_gap_and_performance_profile_by_hand():
    scores = np.array([[0.2, 1.0, 0.5], [0.0, 0.9, 1.0]])
    assert stats.optimality_gap(scores) == pytest.approx(1 - (0.2 + 1 + 0.5 + 0 + 0.9 + 1) / 6)
    assert stats.optimality_gap(scores, gamma=0.5) == pytest.approx(0.5 - 2.2 / 6)
    profile = stats.performance_profile(scores, [0.0, 0.5, 0.95, 1.0])
    np.testing.assert_allclose(profile, [5 / 6, 3 / 6, 2 / 6, 0.0])


def test_aggregate_bootstraps_resample_whole_runs():
    """Each run's tasks move together: with every task of a run at the run's own level, a
    resample of whole runs can only give profiles in multiples of 1/runs; a per-task
    resample would give others. The intervals are the percentiles of that distribution,
    computed here by an explicit loop with the documented draws."""
    runs = np.repeat(np.array([[0.1], [0.4], [0.6], [0.8], [0.95]]), 4, axis=1)
    values = stats.run_bootstrap(
        lambda s: (s.reshape(s.shape[0], -1) > 0.5).mean(axis=1), runs, n_resamples=300)
    assert np.allclose(values * 5, np.round(values * 5))
    x, y = _two_methods(2)
    rng = np.random.default_rng(9)
    loop = []
    for _ in range(RESAMPLES):
        xi = rng.integers(0, 5, 5)
        yi = rng.integers(0, 4, 4)
        loop.append(stats.probability_of_improvement(x[xi], y[yi]))
    interval = stats.probability_of_improvement_ci(x, y, n_resamples=RESAMPLES, seed=9)
    # the same draws in another order (all of X's resamples first), so compare loosely
    assert interval.low == pytest.approx(np.percentile(loop, 2.5), abs=0.03)
    assert interval.high == pytest.approx(np.percentile(loop, 97.5), abs=0.03)
    assert interval.low < interval.estimate < interval.high
    gap = stats.optimality_gap_ci(x, n_resamples=RESAMPLES, seed=9)
    rng = np.random.default_rng(9)
    draws = rng.integers(0, 5, (RESAMPLES, 5))
    by_loop = [stats.optimality_gap(x[d]) for d in draws]
    assert (gap.low, gap.high) == pytest.approx(tuple(np.percentile(by_loop, [2.5, 97.5])))
    profile = stats.performance_profile_ci(x, [0.3, 0.6], n_resamples=RESAMPLES, seed=9)
    by_loop = np.array([stats.performance_profile(x[d], [0.3, 0.6]) for d in draws])
    np.testing.assert_allclose(profile.low, np.percentile(by_loop, 2.5, axis=0))
    np.testing.assert_allclose(profile.high, np.percentile(by_loop, 97.5, axis=0))
    assert stats.probability_of_improvement_ci(x[:1], y).low is None
    assert stats.performance_profile_ci(x[:1], [0.5]).low is None


def test_probability_of_improvement_interval_covers_with_a_seed_effect():
    """5 vs 5 runs, equal methods, a seed effect shared by all tasks: P(X > Y) = 0.5 lies in
    the run-level interval in most of 100 simulated comparisons (a per-task resample would
    miss it far more often)."""
    rng = np.random.default_rng(4)
    levels = np.linspace(0.2, 0.8, 10)
    covered = 0
    for trial in range(100):
        x = levels + rng.normal(0, 0.1, (5, 1)) + rng.normal(0, 0.02, (5, 10))
        y = levels + rng.normal(0, 0.1, (5, 1)) + rng.normal(0, 0.02, (5, 10))
        interval = stats.probability_of_improvement_ci(x, y, n_resamples=300, seed=trial)
        covered += interval.low <= 0.5 <= interval.high
    assert covered >= 80


def test_paired_interval_covers_and_is_narrower_where_seeds_are_shared():
    """200 simulated 5-vs-5 comparisons whose runs of one seed share a seed effect (as runs
    that start from the same weights and draw the same batches do): the paired-by-seed
    interval covers the true difference in at least 90% of them and is narrower than
    Welch's, which cannot use the pairing."""
    rng = np.random.default_rng(27)
    covered, narrower = 0, 0
    for _ in range(200):
        seed_effect = rng.normal(0, 0.08, (5, 1))  # shared by both methods' run of a seed
        levels = rng.uniform(0.2, 0.8, 30)
        a = levels + 0.05 + seed_effect + rng.normal(0, 0.03, (5, 30))
        b = levels + seed_effect + rng.normal(0, 0.03, (5, 30))
        paired, welch = stats.paired_diff_ci(a, b), stats.mean_diff_ci(a, b)
        covered += paired.low <= 0.05 <= paired.high
        narrower += (paired.high - paired.low) < (welch.high - welch.low)
    assert covered >= 180, covered
    assert narrower >= 190, narrower
    with pytest.raises(ValueError, match="one to one"):
        stats.paired_diff_ci(np.ones((5, 3)), np.ones((4, 3)))
    assert stats.paired_diff_ci(np.ones((1, 3)), np.zeros((1, 3))).low is None


def test_differences_by_step_compares_the_seeds_each_step_has():
    """Only steps both curves have; Welch over each side's seeds at that step, the paired
    interval over the seeds both have there, and only when asked for."""
    a = {10: {0: 0.5, 1: 0.7, 2: 0.6}, 20: {0: 0.8, 1: 0.9}, 30: {0: 1.0}}
    b = {10: {2: 0.3, 0: 0.4, 1: 0.5}, 20: {0: 0.6, 2: 0.7}, 40: {0: 0.0}}  # other order
    points = stats.differences_by_step(a, b, paired=True)
    assert [p.step for p in points] == [10, 20]
    first, second = points
    assert (first.n_a, first.n_b, second.n_a, second.n_b) == (3, 3, 2, 2)
    col = lambda xs: np.array(xs)[:, None]  # noqa: E731
    assert first.welch == stats.mean_diff_ci(col([0.5, 0.7, 0.6]), col([0.4, 0.5, 0.3]))
    assert first.paired == stats.paired_diff_ci(col([0.5, 0.7, 0.6]), col([0.4, 0.5, 0.3]))
    assert first.paired != stats.paired_diff_ci(col([0.5, 0.7, 0.6]), col([0.3, 0.4, 0.5]))
    assert second.welch == stats.mean_diff_ci(col([0.8, 0.9]), col([0.6, 0.7]))
    assert second.paired is None  # only seed 0 on both sides at step 20
    assert all(p.paired is None for p in stats.differences_by_step(a, b, paired=False))
