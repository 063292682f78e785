"""Seed-level statistics for comparing methods (rliable style, scipy only).

Every function takes scores as arrays of shape (runs, tasks): one row per seed, one column
per task of the suite, values are success rates (or returns). The unit of replication is the
run (seed): per-run means feed the Welch and Mann-Whitney tests; the bootstrap is stratified
by task (each task's seeds are resampled independently, rliable's StratifiedBootstrap), which
is scipy.stats.bootstrap with one sample per task.

Quantities that need two or more seeds (std, p-values, intervals) are returned as None with
one seed, so a table can say "n/a (n=1)" instead of printing a misleading 0 or NaN.
Everything is deterministic given ``seed``. scipy.stats is imported inside the functions
because it takes most of a second and the CLI imports this module to build its parser.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


def _as_scores(scores) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"scores must be a non-empty (runs, tasks) array, got shape {array.shape}")
    return array


def run_means(scores) -> np.ndarray:
    """Per-run mean over tasks: the number one seed contributes to a table cell."""
    return _as_scores(scores).mean(axis=1)


@dataclass(frozen=True)
class SeedSummary:
    n: int  # number of runs (seeds)
    mean: float  # mean over runs of the per-run mean over tasks
    std: float | None  # sample std (ddof=1) over runs; None with one run


def summarize(scores) -> SeedSummary:
    """Mean and sample standard deviation over seeds of the per-run task-mean."""
    per_run = run_means(scores)
    std = float(per_run.std(ddof=1)) if per_run.size > 1 else None
    return SeedSummary(n=int(per_run.size), mean=float(per_run.mean()), std=std)


def welch_p(a, b) -> float | None:
    """Two-sided Welch t-test p of per-run means; None when undefined.

    Undefined: fewer than two runs on either side, or both sides without variance (scipy
    would return NaN, or 0 for different constants, which is no evidence with such data).
    """
    from scipy import stats as sps

    x, y = run_means(a), run_means(b)
    if x.size < 2 or y.size < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant samples
        p = sps.ttest_ind(x, y, equal_var=False).pvalue
    return None if np.isnan(p) else float(p)


def mann_whitney_p(a, b) -> float | None:
    """Two-sided Mann-Whitney U p of per-run means (with 3 vs 3 seeds it cannot go below 0.1)."""
    from scipy import stats as sps

    x, y = run_means(a), run_means(b)
    if x.size < 2 or y.size < 2:
        return None
    p = sps.mannwhitneyu(x, y, alternative="two-sided").pvalue
    return None if np.isnan(p) else float(p)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float | None  # None when the interval is undefined (fewer than two seeds)
    high: float | None

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def _stratified_bootstrap(samples, statistic, n_resamples, confidence, seed):
    from scipy import stats as sps

    result = sps.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        axis=-1,
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def mean_diff_ci(
    a,
    b,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """Stratified-bootstrap interval of mean(a) - mean(b) over all runs and tasks.

    a and b share their task columns but may have different numbers of runs. Each (method,
    task) column is its own bootstrap sample, so each task's seeds are resampled
    independently and every resample keeps all tasks.
    """
    a, b = _as_scores(a), _as_scores(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"task counts differ: {a.shape[1]} vs {b.shape[1]}")
    estimate = float(a.mean() - b.mean())
    if a.shape[0] < 2 or b.shape[0] < 2:
        return Interval(estimate, None, None)
    num_tasks = a.shape[1]

    def statistic(*columns, axis=-1):
        means = np.stack([column.mean(axis=axis) for column in columns], axis=-1)
        return means[..., :num_tasks].mean(axis=-1) - means[..., num_tasks:].mean(axis=-1)

    samples = tuple(a.T) + tuple(b.T)
    low, high = _stratified_bootstrap(samples, statistic, n_resamples, confidence, seed)
    return Interval(estimate, low, high)


def iqm(scores) -> float:
    """Interquartile mean of all (run, task) scores: the mean of the middle 50%."""
    from scipy import stats as sps

    return float(sps.trim_mean(_as_scores(scores).ravel(), 0.25))


def iqm_ci(
    scores,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """IQM with a stratified-bootstrap interval (rliable's aggregate IQM with CIs)."""
    from scipy import stats as sps

    scores = _as_scores(scores)
    estimate = iqm(scores)
    if scores.shape[0] < 2:
        return Interval(estimate, None, None)

    def statistic(*columns, axis=-1):
        return sps.trim_mean(np.concatenate(columns, axis=axis), 0.25, axis=axis)

    low, high = _stratified_bootstrap(tuple(scores.T), statistic, n_resamples, confidence, seed)
    return Interval(estimate, low, high)


def fdr_adjust(pvalues: list[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values over the defined entries; None stays None."""
    from scipy import stats as sps

    defined = [i for i, p in enumerate(pvalues) if p is not None]
    adjusted: list[float | None] = [None] * len(pvalues)
    if defined:
        values = sps.false_discovery_control([pvalues[i] for i in defined], method="bh")
        for i, value in zip(defined, values):
            adjusted[i] = float(value)
    return adjusted


def best_method(scores: dict[str, np.ndarray], candidates) -> str | None:
    """The candidate with the highest mean of per-run means (first one on ties).

    Candidates with at least 2 runs come first: a single-run candidate would make every
    test against it undefined, so it is the reference only when no candidate has 2 runs."""
    present = [name for name in candidates if name in scores]
    testable = [name for name in present if _as_scores(scores[name]).shape[0] >= 2]
    pool = testable or present
    if not pool:
        return None
    return max(pool, key=lambda name: summarize(scores[name]).mean)


@dataclass(frozen=True)
class Comparison:
    method: str
    baseline: str
    n_method: int
    n_baseline: int
    diff: Interval  # mean(method) - mean(baseline), stratified-bootstrap interval
    p_welch: float | None
    p_mann_whitney: float | None


def compare(
    scores: dict[str, np.ndarray],
    method: str,
    baseline: str,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Comparison:
    """Every statistic the tables report for one method against one baseline."""
    a, b = _as_scores(scores[method]), _as_scores(scores[baseline])
    return Comparison(
        method=method,
        baseline=baseline,
        n_method=a.shape[0],
        n_baseline=b.shape[0],
        diff=mean_diff_ci(a, b, n_resamples=n_resamples, confidence=confidence, seed=seed),
        p_welch=welch_p(a, b),
        p_mann_whitney=mann_whitney_p(a, b),
    )
