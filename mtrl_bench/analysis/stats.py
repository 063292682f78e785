"""Seed-level statistics for comparing methods (rliable style, scipy only).

Every function takes scores as arrays of shape (runs, tasks): one row per seed, one column
per task of the suite, values are success rates (or returns). The unit of replication is the
run: one seed is ONE model trained on every task, so whatever luck a seed has moves all of
its tasks together. Per-run means feed the Welch and Mann-Whitney tests and the Welch
t-intervals; the bootstraps of the IQM and of rliable's aggregate metrics (probability of
improvement, performance profiles, optimality gap) resample whole runs. (rliable's
stratified bootstrap, which resamples each task's seeds independently, suits Atari, where
every game is its own run; here it would average the seed effect away and give intervals
several times too narrow.)

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


def mean_ci(scores, *, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """t-interval of the mean over runs of the per-run task-mean (n - 1 degrees of freedom)."""
    from scipy import stats as sps

    per_run = run_means(scores)
    estimate = float(per_run.mean())
    if per_run.size < 2:
        return Interval(estimate, None, None)
    half = float(sps.t.ppf(0.5 + confidence / 2, per_run.size - 1)
                 * per_run.std(ddof=1) / np.sqrt(per_run.size))
    return Interval(estimate, estimate - half, estimate + half)


def mean_diff_ci(a, b, *, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Welch t-interval of mean(a) - mean(b), with runs as the unit of replication.

    a and b share their task columns but may have different numbers of runs. Each run
    contributes its mean over tasks; the interval is the Welch (unequal variances)
    t-interval of the difference of those per-run means, the interval matching
    :func:`welch_p`. Tasks are not resampled on their own: a seed is one model trained on
    every task, so its luck moves all its tasks together, and only whole runs replicate.
    Undefined (None) with fewer than two runs on a side or no variance on either.
    """
    from scipy import stats as sps

    a, b = _as_scores(a), _as_scores(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"task counts differ: {a.shape[1]} vs {b.shape[1]}")
    x, y = run_means(a), run_means(b)
    estimate = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return Interval(estimate, None, None)
    interval = sps.ttest_ind(x, y, equal_var=False).confidence_interval(confidence)
    return Interval(estimate, float(interval.low), float(interval.high))


def paired_diff_ci(a, b, *, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """t-interval of the mean per-seed difference: row s of ``a`` and of ``b`` are runs of
    the same seed that shared their random streams (initial weights, batches), so the seed
    effect they share cancels in a - b and only the method's effect and the rest of the
    noise remain (n - 1 degrees of freedom over the n paired seeds). Use it only where the
    runs' records show the shared streams; undefined with fewer than two pairs."""
    from scipy import stats as sps

    a, b = _as_scores(a), _as_scores(b)
    if a.shape != b.shape:
        raise ValueError(f"paired runs must match one to one, got {a.shape} vs {b.shape}")
    differences = run_means(a) - run_means(b)
    estimate = float(differences.mean())
    if differences.size < 2:
        return Interval(estimate, None, None)
    half = float(sps.t.ppf(0.5 + confidence / 2, differences.size - 1)
                 * differences.std(ddof=1) / np.sqrt(differences.size))
    return Interval(estimate, estimate - half, estimate + half)


@dataclass(frozen=True)
class StepDifference:
    """A - B at one evaluation step over the seeds each side evaluated there."""

    step: int
    welch: Interval
    paired: Interval | None  # None unless asked for and two or more seeds on both sides
    n_a: int
    n_b: int


def differences_by_step(curves_a: dict[int, dict[int, float]],
                        curves_b: dict[int, dict[int, float]], *, paired: bool,
                        confidence: float = DEFAULT_CONFIDENCE) -> list[StepDifference]:
    """A - B at every step both sides evaluated, from ``{step: {seed: value}}`` curves: the
    Welch interval over each side's seeds and, with ``paired`` (the caller has checked that
    seed s of A and of B shared their random streams), the paired interval over the seeds
    both sides have at that step."""
    out = []
    for step in sorted(set(curves_a) & set(curves_b)):
        xa, xb = curves_a[step], curves_b[step]
        welch = mean_diff_ci(np.array(list(xa.values()))[:, None],
                             np.array(list(xb.values()))[:, None], confidence=confidence)
        common = sorted(set(xa) & set(xb))
        pair = paired_diff_ci(np.array([xa[s] for s in common])[:, None],
                              np.array([xb[s] for s in common])[:, None],
                              confidence=confidence) \
            if paired and len(common) >= 2 else None
        out.append(StepDifference(step, welch, pair, len(xa), len(xb)))
    return out


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
    """IQM with a percentile bootstrap over whole runs.

    Each resample draws runs with replacement and keeps every task of a drawn run (a seed
    is one model for all tasks), then takes the IQM of all its (run, task) scores. With
    few runs a percentile bootstrap is narrower than its nominal level: read the interval
    as a spread over seeds, not as an exact 95% interval.
    """
    from scipy import stats as sps

    scores = _as_scores(scores)
    estimate = iqm(scores)
    runs = scores.shape[0]
    if runs < 2:
        return Interval(estimate, None, None)
    draws = np.random.default_rng(seed).integers(0, runs, size=(n_resamples, runs))
    resampled = scores[draws].reshape(n_resamples, -1)  # (resamples, runs * tasks)
    values = sps.trim_mean(resampled, 0.25, axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


# ------------------------------------------------------------ rliable's aggregate metrics
# (Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice",
# NeurIPS 2021), with whole runs as the unit of every bootstrap.


def run_bootstrap(statistic, *samples, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                  ) -> np.ndarray:
    """``statistic`` of ``n_resamples`` resamples of whole runs: each (runs, tasks) sample is
    resampled on its own, runs drawn with replacement and every task of a drawn run kept
    (never a task's runs independently of the others). ``statistic`` takes the resampled
    arrays with a leading resample axis, (n_resamples, runs, tasks) each, and returns one
    value per resample (or an array per resample)."""
    rng = np.random.default_rng(seed)
    resampled = []
    for sample in samples:
        sample = _as_scores(sample)
        draws = rng.integers(0, sample.shape[0], size=(n_resamples, sample.shape[0]))
        resampled.append(sample[draws])
    return np.asarray(statistic(*resampled))


def _percentile_interval(estimate: float, values: np.ndarray, confidence: float) -> Interval:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def probability_of_improvement(x, y) -> float:
    """P(X > Y): per task, the probability that a run of X scores above a run of Y (ties
    count one half: the Mann-Whitney U statistic over n_x·n_y), averaged over tasks (rliable's
    definition). Both (runs, tasks), same task columns."""
    return float(_poi(_as_scores(x)[None], _as_scores(y)[None])[0])


def _poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) per resample of (resamples, runs, tasks) arrays."""
    if x.shape[2] != y.shape[2]:
        raise ValueError(f"task counts differ: {x.shape[2]} vs {y.shape[2]}")
    greater = (x[:, :, None, :] > y[:, None, :, :]).mean(axis=(1, 2))
    equal = (x[:, :, None, :] == y[:, None, :, :]).mean(axis=(1, 2))
    return (greater + 0.5 * equal).mean(axis=1)


def probability_of_improvement_ci(x, y, *, n_resamples: int = DEFAULT_RESAMPLES,
                                  confidence: float = DEFAULT_CONFIDENCE,
                                  seed: int = 0) -> Interval:
    """P(X > Y) with a percentile bootstrap resampling the runs of X and of Y (whole runs);
    undefined (None) with fewer than 2 runs on a side."""
    x, y = _as_scores(x), _as_scores(y)
    estimate = probability_of_improvement(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        return Interval(estimate, None, None)
    values = run_bootstrap(_poi, x, y, n_resamples=n_resamples, seed=seed)
    return _percentile_interval(estimate, values, confidence)


def optimality_gap(scores, gamma: float = 1.0) -> float:
    """How far the (run, task) scores fall short of ``gamma`` on average: gamma − mean of
    min(score, gamma) (rliable's; lower is better, 0 = every task solved in every run)."""
    return float(gamma - np.minimum(_as_scores(scores), gamma).mean())


def optimality_gap_ci(scores, gamma: float = 1.0, *, n_resamples: int = DEFAULT_RESAMPLES,
                      confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> Interval:
    """Optimality gap with a percentile bootstrap over whole runs (None below 2 runs)."""
    scores = _as_scores(scores)
    estimate = optimality_gap(scores, gamma)
    if scores.shape[0] < 2:
        return Interval(estimate, None, None)
    values = run_bootstrap(lambda s: gamma - np.minimum(s, gamma).mean(axis=(1, 2)), scores,
                           n_resamples=n_resamples, seed=seed)
    return _percentile_interval(estimate, values, confidence)


def performance_profile(scores, taus) -> np.ndarray:
    """Per τ, the fraction of all (run, task) scores above τ (rliable's run-score
    distribution)."""
    flat = _as_scores(scores).ravel()
    return (flat[None, :] > np.asarray(taus, dtype=np.float64)[:, None]).mean(axis=1)


@dataclass(frozen=True)
class Profile:
    taus: np.ndarray
    fraction: np.ndarray  # per τ, the fraction of (run, task) scores above it
    low: np.ndarray | None  # per τ, the band (None below 2 runs)
    high: np.ndarray | None


def performance_profile_ci(scores, taus, *, n_resamples: int = DEFAULT_RESAMPLES,
                           confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> Profile:
    """The performance profile with a pointwise percentile band from a bootstrap over whole
    runs."""
    scores, taus = _as_scores(scores), np.asarray(taus, dtype=np.float64)
    fraction = performance_profile(scores, taus)
    if scores.shape[0] < 2:
        return Profile(taus, fraction, None, None)
    values = run_bootstrap(
        lambda s: (s.reshape(s.shape[0], 1, -1) > taus[None, :, None]).mean(axis=2), scores,
        n_resamples=n_resamples, seed=seed)  # (resamples, taus)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return Profile(taus, fraction, low, high)


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
    diff: Interval  # mean(method) - mean(baseline), Welch t-interval over runs
    p_welch: float | None
    p_mann_whitney: float | None


def compare(a, b, method: str = "method", baseline: str = "baseline", *,
            confidence: float = DEFAULT_CONFIDENCE) -> Comparison:
    """Every statistic the tables report for one method's runs ``a`` against ``b``."""
    a, b = _as_scores(a), _as_scores(b)
    return Comparison(
        method=method,
        baseline=baseline,
        n_method=a.shape[0],
        n_baseline=b.shape[0],
        diff=mean_diff_ci(a, b, confidence=confidence),
        p_welch=welch_p(a, b),
        p_mann_whitney=mann_whitney_p(a, b),
    )
