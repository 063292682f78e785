"""Seed statistics on small arrays whose answers are known or computed independently."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from mtrl_bench import stats

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


def test_bootstrap_interval_covers_true_difference_and_excludes_zero():
    rng = np.random.default_rng(0)
    task_levels = np.linspace(0.1, 0.9, 10)
    a = task_levels + 0.15 + rng.normal(0, 0.02, (5, 10))
    b = task_levels + rng.normal(0, 0.02, (4, 10))
    interval = stats.mean_diff_ci(a, b, n_resamples=RESAMPLES, seed=1)
    assert interval.estimate == pytest.approx(a.mean() - b.mean())
    assert interval.low < 0.15 < interval.high
    assert interval.excludes_zero()


def test_bootstrap_is_stratified_by_task():
    """Tasks as strata: spread between tasks must not widen the interval, only seed noise."""
    rng = np.random.default_rng(3)
    tasks = np.array([0.0, 1.0, 0.0, 1.0])
    a = tasks + rng.normal(0, 0.01, (3, 4))
    b = tasks - 0.05 + rng.normal(0, 0.01, (3, 4))
    interval = stats.mean_diff_ci(a, b, n_resamples=RESAMPLES, seed=0)
    # An unstratified resample of the 12 pooled scores per method would be several tenths wide.
    assert interval.high - interval.low < 0.05
    assert interval.low > 0


def test_bootstrap_is_deterministic_given_seed():
    rng = np.random.default_rng(5)
    a, b = rng.uniform(size=(3, 6)), rng.uniform(size=(3, 6))
    first = stats.mean_diff_ci(a, b, n_resamples=RESAMPLES, seed=11)
    assert first == stats.mean_diff_ci(a, b, n_resamples=RESAMPLES, seed=11)
    assert first != stats.mean_diff_ci(a, b, n_resamples=RESAMPLES, seed=12)
    one_seed = stats.mean_diff_ci(a[:1], b, n_resamples=RESAMPLES)
    assert one_seed.low is None and not one_seed.excludes_zero()


def test_iqm_of_known_arrays():
    # Eight scores: the middle four are 3, 4, 5, 6.
    assert stats.iqm(np.array([[1, 2, 3, 4], [5, 6, 7, 8]])) == pytest.approx(4.5)
    assert stats.iqm(np.array([[0.0, 0.0, 1.0, 1.0]])) == pytest.approx(0.5)
    scores = np.array([[0.1, 0.5, 0.9, 0.3], [0.2, 0.6, 0.8, 0.4], [0.15, 0.55, 0.85, 0.35]])
    interval = stats.iqm_ci(scores, n_resamples=RESAMPLES, seed=0)
    assert interval.estimate == pytest.approx(sps.trim_mean(scores.ravel(), 0.25))
    assert interval.low <= interval.estimate <= interval.high
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
    comparison = stats.compare(scores, "socodt", "harmodt-f", n_resamples=RESAMPLES)
    assert (comparison.n_method, comparison.n_baseline) == (3, 3)
    assert comparison.diff.estimate == pytest.approx(0.85 - 0.55)
    assert comparison.p_welch == pytest.approx(sps.ttest_ind(
        scores["socodt"].mean(1), scores["harmodt-f"].mean(1), equal_var=False).pvalue)
