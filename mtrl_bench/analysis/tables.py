"""`mtrl-bench table`: the paper's tables rebuilt from run directories alone.

Runs are grouped into cells by :func:`mtrl_bench.analysis.cells.group_cells` (one identity = one
cell: a row is a method with one set of its own parameters, a column is a suite x dataset
quality x protocol), the only grouping any table or figure uses. Written to the output
folder as Markdown, CSV and LaTeX:

- table1: success (%) per row x column, mean ± std over seeds, and Δ vs the column's named
  reference baseline with a Welch t-interval over seeds; arrows only where both sides have
  enough seeds (``--min-seeds``, default 5) and the BH-adjusted Welch p and the interval
  agree; a companion table lists every comparison. The headline is the final checkpoint;
  table1_best repeats it for the best evaluation, labelled as such.
- table4: each proposed method and its registered ablations: success and return.
- per_task: success per task per row, one section per column.
- iqm: interquartile mean over (seed, task) scores with a bootstrap over whole runs.
- aggregates: rliable's optimality gap and points of the performance profile; poi: the
  probability of improvement over the reference and pairwise; each with a bootstrap over
  whole runs.
- mask_dynamics: per masked row, final sparsity, mean soft value and entries conflicted /
  recovered per update, from metrics.jsonl.
- runs_long.csv: one row per run x task (final and best), every run the tables use.

Every output lists the runs it leaves out and why. Missing cells are "—" (empty in CSV),
never 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtrl_bench.analysis import paper, stats
from mtrl_bench.analysis.cells import (
    Cell,
    Column,
    Row,
    column_key,
    group_cells,
    numerics_notes,
    row_key,
)
from mtrl_bench.analysis.grid import (
    CellScores,
    Grid,
    TableOptions,
    cell_scores,
    reference_rows,
)
from mtrl_bench.analysis.render import (
    MISSING,
    Entry,
    Table,
    csv_text,
    fmt_p,
    interval_text,
    nan_if_none,
    number,
    pct,
)
from mtrl_bench.errors import UserError
from mtrl_bench.identity import differences
from mtrl_bench.io import atomic_write_text
from mtrl_bench.runs.rundir import MetricsLog, RunRecord, scan_runs

ALPHA = 0.05
PAPER = "cf. SoCo-DT paper"


def mean_std_entry(summary: stats.SeedSummary, scale: float = 100.0, digits: int = 2) -> Entry:
    text = number(scale * summary.mean, digits)
    if summary.std is not None:
        text += f" ± {number(scale * summary.std, digits)}"
    return Entry(text, n=summary.n)


def _best(values: dict, tolerance: float = 1e-9) -> set:
    """Keys whose value ties the maximum (all bold on ties, as the paper does at 100%)."""
    if not values:
        return set()
    top = max(values.values())
    return {key for key, value in values.items() if math.isclose(value, top, abs_tol=tolerance)}


def _identity_notes(rows: list[Row], grid: Grid) -> list[str]:
    """Say in full what sets apart columns of one suite and rows of one method."""
    notes = [f"{c.label}: {c.note}." for c in grid.columns if c.note]
    identities = {row: s.cell.identity["method"] for (row, _), s in grid.at.items()}
    for row in rows:
        main = next((r for r in rows if r.method == row.method and r.label == r.method), None)
        if row is not main and main is not None:
            notes.append(f"{row.label}: {row.method} with "
                         + "; ".join(differences(identities[main], identities[row])) + ".")
    return notes


def _base_record(row: Row, column: Column, options: TableOptions) -> dict:
    return dict(suite=column.suite, quality=column.quality, column=column.label,
                protocol=column.protocol, method=row.method, row=row.label,
                variant=row.variant, role=row.role, metric=options.metric)


# ---------------------------------------------------------------------------- Table 1


@dataclass
class Verdict:
    comparison: stats.Comparison
    p_adjusted: float | None
    powered: bool  # at least min_seeds runs on both sides
    mark: str  # "up" / "down" / ""

    def text(self, min_seeds: int) -> str:
        if self.mark:
            return {"up": "↑ higher", "down": "↓ lower"}[self.mark]
        if self.comparison.diff.low is None:
            return "n/a (needs ≥2 seeds a side and some variance)"
        if not self.powered:
            return f"under-powered (<{min_seeds} seeds a side)"
        return "not significant"


#: the streams two runs of one seed must share to be paired: the initial masks may differ
#: (a masked method against an unmasked one is still the same weights on the same batches)
PAIRING_STREAMS = ("initial_weights", "batch_stream")


def paired_by_seed(a: CellScores, b: CellScores) -> tuple[np.ndarray, np.ndarray] | None:
    """The success rows of the seeds both cells ran, when every such pair of runs shared its
    random streams by their records (:data:`PAIRING_STREAMS`); None otherwise, or with
    fewer than two such seeds."""
    runs_a = {run.seed: run for run in a.cell.runs}
    runs_b = {run.seed: run for run in b.cell.runs}
    common = [seed for seed in a.seeds if seed in b.seeds]
    if len(common) < 2:
        return None
    for seed in common:
        streams_a, streams_b = runs_a[seed].streams or {}, runs_b[seed].streams or {}
        if any(streams_a.get(k) is None or streams_a.get(k) != streams_b.get(k)
               for k in PAIRING_STREAMS):
            return None
    return (a.success[[a.seeds.index(s) for s in common]],
            b.success[[b.seeds.index(s) for s in common]])


@dataclass
class Table1Tests:
    """Every comparison of Table 1 with its column's reference, and the verdict rule."""

    references: dict[Column, Row]
    pending: list[tuple[Column, Row, stats.Comparison]]
    adjusted: list[float | None]  # Benjamini-Hochberg over the defined Welch p-values
    verdicts: dict[tuple[Row, Column], Verdict]
    paired: dict[tuple[Row, Column], stats.Interval | None]

    @property
    def tested(self) -> int:
        return sum(p is not None for p in self.adjusted)


def table1_tests(grid: Grid, rows: list[Row], options: TableOptions) -> Table1Tests:
    """Each row against its column's reference (Welch, and paired by seed where the records
    show shared streams), BH over the table, and the arrow rule: at least ``min_seeds`` a
    side, adjusted p < ALPHA and an interval that excludes 0."""
    references = reference_rows(grid, rows, options)
    pending = []  # (column, row, Comparison)
    paired: dict[tuple[Row, Column], stats.Interval | None] = {}
    for column, reference in references.items():
        base = grid.get(reference, column)
        for row in rows:
            scores = grid.get(row, column)
            if scores is not None and row != reference:
                pending.append((column, row, stats.compare(
                    scores.success, base.success, row.label, reference.label)))
                pairs = paired_by_seed(scores, base)
                paired[(row, column)] = None if pairs is None else stats.paired_diff_ci(*pairs)
    adjusted = stats.fdr_adjust([c.p_welch for _, _, c in pending])
    verdicts: dict[tuple[Row, Column], Verdict] = {}
    for (column, row, comp), p_adj in zip(pending, adjusted):
        powered = min(comp.n_method, comp.n_baseline) >= options.min_seeds
        significant = p_adj is not None and p_adj < ALPHA and comp.diff.excludes_zero()
        mark = ("up" if comp.diff.estimate > 0 else "down") if powered and significant else ""
        verdicts[(row, column)] = Verdict(comp, p_adj, powered, mark)
    return Table1Tests(references, pending, adjusted, verdicts, paired)


def _delta_entry(row: Row, reference: Row | None, verdict: Verdict | None) -> Entry:
    """Table 1's Δ cell: the difference with its Welch interval and the arrow."""
    if reference is None:
        return Entry(MISSING)
    if row == reference:
        return Entry("reference")
    diff = verdict.comparison.diff
    text = f"{pct(diff.estimate, signed=True)} {interval_text(diff.low, diff.high)}"
    text = text.replace(" n/a", " [n/a]")
    if diff.low is not None and not verdict.powered:
        text += " under-powered"
    return Entry(text, mark=verdict.mark)


def _table1_record(record: dict, scores: CellScores, summary: stats.SeedSummary, bold: bool,
                   reference: Row | None, verdict: Verdict | None,
                   pair: stats.Interval | None, options: TableOptions) -> dict:
    """Table 1's CSV row of one finished cell."""
    mean = stats.mean_ci(scores.success)
    returns = stats.summarize(scores.returns)
    record.update({
        "cell": scores.cell.id,
        "status": "finished", "n": summary.n,
        "mean_success_pct": 100 * summary.mean,
        "std_success_pct": nan_if_none(summary.std, 100),
        "ci_low_success_pct": nan_if_none(mean.low, 100),
        "ci_high_success_pct": nan_if_none(mean.high, 100),
        "mean_return": returns.mean, "std_return": nan_if_none(returns.std),
        "best_in_column": bold,
        "reference": reference.label if reference else None})
    if verdict is not None:
        comp = verdict.comparison
        record.update(
            n_reference=comp.n_baseline, diff_pct=100 * comp.diff.estimate,
            diff_ci_low_pct=nan_if_none(comp.diff.low, 100),
            diff_ci_high_pct=nan_if_none(comp.diff.high, 100),
            p_welch=nan_if_none(comp.p_welch), p_welch_bh=nan_if_none(verdict.p_adjusted),
            p_mann_whitney=nan_if_none(comp.p_mann_whitney),
            verdict=verdict.text(options.min_seeds))
        record.update(
            paired_diff_ci_low_pct=nan_if_none(pair and pair.low, 100),
            paired_diff_ci_high_pct=nan_if_none(pair and pair.high, 100))
    return record


def _table1_notes(grid: Grid, rows: list[Row], tests: Table1Tests,
                  options: TableOptions) -> list[str]:
    how = ("the row given with --reference" if options.reference else
           "the baseline with the highest mean among those with at least 2 seeds (with none, "
           "the highest); only baselines at their default parameters compete")
    baselines = (", ".join(options.baselines) if options.baselines is not None
                 else "methods registered as baselines")
    notes = [
        f"Success rate (%) at the {options.label}: mean ± sample std (ddof=1) over seeds of "
        "each seed's mean over the suite's tasks; n = seeds; — = no finished run (never "
        "counted as 0); bold = best in the column.",
        "Δ = row − the column's reference in percentage points, with the 95% Welch "
        "t-interval of the difference of per-seed means. Seeds are the unit: one seed is one "
        "model trained on every task, so a seed's luck moves all of its tasks together and "
        "only whole runs replicate.",
        f"↑/↓ = higher/lower than the reference: at least {options.min_seeds} seeds on both "
        f"sides, Welch p < {ALPHA} after Benjamini-Hochberg adjustment over the "
        f"{tests.tested} p-values defined in this table, and the interval excludes 0. With "
        "fewer seeds the Δ says under-powered and no arrow is drawn.",
        f"Reference per column: {how}; baselines: {baselines}.",
        *_identity_notes(rows, grid),
        *numerics_notes([s.cell for s in grid.at.values()]),
    ]
    if any(r.role == "ablation" for r in grid.rows):
        notes.append("Ablations are in the ablation table (table4).")
    return notes


def _table1_comparisons(tests: Table1Tests, options: TableOptions) -> Table:
    comp_rows = []
    for (column, row, comp), p_adj in zip(tests.pending, tests.adjusted):
        verdict = tests.verdicts[(row, column)]
        pair = tests.paired[(row, column)]
        comp_rows.append([
            column.label, row.label, comp.baseline, pct(comp.diff.estimate, signed=True),
            interval_text(comp.diff.low, comp.diff.high), fmt_p(comp.p_welch), fmt_p(p_adj),
            fmt_p(comp.p_mann_whitney), f"{comp.n_method} vs {comp.n_baseline}",
            verdict.text(options.min_seeds),
            MISSING if pair is None else interval_text(pair.low, pair.high),
        ])
    return Table(
        "table1_comparisons", f"Every comparison with the reference, {options.label}",
        [("", h) for h in ("Column", "Row", "Reference", "Δ (pp)", "95% CI (Welch)",
                           "Welch p", "Welch p (BH)", "Mann-Whitney p", "Seeds", "Verdict",
                           "95% CI paired by seed")],
        comp_rows,
        [f"Benjamini-Hochberg over the {tests.tested} defined Welch p-values. Mann-Whitney p "
         "is coarse with few seeds: 3 vs 3 cannot go below 0.1, 5 vs 5 not below 0.008.",
         "Paired by seed: the t-interval of the mean per-seed difference, only where every "
         "seed both cells have was run from the same initial weights and batch stream (the "
         "digests in each run's meta.json \"streams\"); — where the records do not show it "
         "(runs made before streams were recorded, or another model such as MTDT's). A "
         "secondary analysis: verdicts use the Welch test."])


def table1(grid: Grid, options: TableOptions):
    """Paper Table 1 with Δ vs a named reference baseline; returns (tables, csv rows): the
    tests (:func:`table1_tests`), then the layout, one CSV record per cell, the notes."""
    grid = grid.fixed_suites()
    rows = [r for r in grid.rows if r.role != "ablation"]
    tests = table1_tests(grid, rows, options)
    columns = [("", "Method")]
    for column in grid.columns:
        reference = tests.references.get(column)
        columns += [(column.label, "success (%)"),
                    (column.label, f"Δ vs {reference.label} (pp)" if reference
                     else "Δ (no reference)")]
    summaries = {key: stats.summarize(s.success) for key, s in grid.at.items()}
    bold = {c: _best({r: summaries[(r, c)].mean for r in rows if (r, c) in summaries})
            for c in grid.columns}
    body, csv_rows = [], []
    for row in rows:
        line = [row.label]
        for column in grid.columns:
            record = _base_record(row, column, options)
            scores = grid.get(row, column)
            if scores is None:
                line += [Entry(MISSING), Entry(MISSING)]
                csv_rows.append({**record, "status": "missing", "n": 0})
                continue
            entry = mean_std_entry(summaries[(row, column)])
            entry.bold = row in bold[column]
            reference = tests.references.get(column)
            verdict = tests.verdicts.get((row, column))
            line += [entry, _delta_entry(row, reference, verdict)]
            csv_rows.append(_table1_record(record, scores, summaries[(row, column)],
                                           entry.bold, reference, verdict,
                                           tests.paired.get((row, column)), options))
        body.append(line)
    main = Table("table1", f"Success rate (%), {options.label}", columns, body,
                 _table1_notes(grid, rows, tests, options), source=f"{PAPER} Table 1")
    return [main, _table1_comparisons(tests, options)], csv_rows


# ---------------------------------------------------------------------------- Table 4


def _ablation_groups(grid: Grid) -> list[tuple[str, list[Row]]]:
    """(proposed method, its ablation rows then its own rows) for every proposed method whose
    ablations have runs (as the runs' records name them)."""
    groups = []
    proposed = [r.method for r in grid.rows if r.role == "proposed"]
    proposed += [r.ablation_of for r in grid.rows if r.role == "ablation"]
    for method in dict.fromkeys(proposed):
        members = [r for r in grid.rows if r.role == "ablation" and r.ablation_of == method]
        if members:
            own = [r for r in grid.rows if r.method == method]
            if not own:  # ablations without their method: its row shows as missing
                own = [Row(method, "", method, "proposed")]
            groups.append((method, sorted(members, key=row_key) + own))
    return groups


def table4(grid: Grid, options: TableOptions):
    """Paper Table 4: a proposed method and its ablations, success (%) and return."""
    tables, csv_rows = [], []
    for proposed, members in _ablation_groups(grid):
        columns_used = [c for c in grid.columns if any(grid.get(r, c) for r in members)]
        header = [("", "Components"), ("", "Method")]
        for column in columns_used:
            header += [(column.label, "success (%)"), (column.label, "return")]
        summaries = {(r, c): (stats.summarize(grid.get(r, c).success),
                              stats.summarize(grid.get(r, c).returns))
                     for r in members for c in columns_used if grid.get(r, c)}
        body = []
        for row in members:
            line = [row.components or "", row.label]
            for column in columns_used:
                record = {**_base_record(row, column, options), "components": row.components,
                          "ablation_of": proposed}
                if (row, column) not in summaries:
                    line += [Entry(MISSING), Entry(MISSING)]
                    csv_rows.append({**record, "status": "missing", "n": 0})
                    continue
                success, returns = summaries[(row, column)]
                in_column = {r: v for (r, c), v in summaries.items() if c == column}
                success_entry = mean_std_entry(success)
                success_entry.bold = row in _best({r: v[0].mean for r, v in in_column.items()})
                return_entry = mean_std_entry(returns, scale=1.0, digits=1)
                return_entry.bold = row in _best({r: v[1].mean for r, v in in_column.items()})
                return_entry.n = None
                line += [success_entry, return_entry]
                csv_rows.append({**record, "status": "finished", "n": success.n,
                                 "mean_success_pct": 100 * success.mean,
                                 "std_success_pct": nan_if_none(success.std, 100),
                                 "mean_return": returns.mean,
                                 "std_return": nan_if_none(returns.std)})
            body.append(line)
        notes = [f"{options.label}; mean ± sample std over seeds; n = seeds; — = no finished "
                 "run; bold = best of the rows per column. Rows: the methods registered as "
                 f"ablations of {proposed}, then {proposed} itself."]
        if proposed == "socodt":
            notes.append("S = soft masks, A = adaptive (IQR) mask sparsity, M = "
                         "magnitude-sensitive harmony score.")
        tables.append(Table("table4", f"Ablations of {proposed}, {options.label}",
                            header, body, notes, source=f"{PAPER} Table 4"))
    if not tables:
        tables.append(Table("table4", f"Ablations, {options.label}", [("", "Method")], [],
                            ["No proposed method with registered ablations has runs here."]))
    return tables, csv_rows


# ---------------------------------------------------------------------------- per task, IQM


def per_task_table(grid: Grid, options: TableOptions):
    """Success per task per row (mean over seeds), one table per column."""
    tables, csv_rows = [], []
    for column in grid.columns:
        rows = [r for r in grid.rows if grid.get(r, column)]
        cells = {r: grid.get(r, column) for r in rows}
        tasks = cells[rows[0]].tasks
        per_task = {r: cells[r].success[:, [cells[r].tasks.index(t) for t in tasks]]
                    for r in rows}
        body = []
        for index, task in enumerate(tasks):
            values = {r: per_task[r][:, index].mean() for r in rows}
            best = _best(values)
            body.append([task] + [Entry(pct(values[r]), bold=r in best) for r in rows])
            for r in rows:
                runs = per_task[r][:, index]
                returns = cells[r].returns[:, cells[r].tasks.index(task)]
                csv_rows.append({**_base_record(r, column, options), "task": task,
                                 "n": runs.size, "mean_success_pct": 100 * runs.mean(),
                                 "std_success_pct": 100 * runs.std(ddof=1) if runs.size > 1
                                 else math.nan, "mean_return": returns.mean()})
        means = {r: stats.summarize(cells[r].success).mean for r in rows}
        best = _best(means)
        body.append(["mean"] + [Entry(pct(means[r]), bold=r in best) for r in rows])
        notes = [f"Success rate (%) at the {options.label}, mean over seeds; bold = best in "
                 "the row."]
        absent = [r.label for r in grid.rows if r not in cells]
        if absent:
            notes.append("No finished runs here for: " + ", ".join(absent) + ".")
        tables.append(Table(
            "per_task", f"Per-task success, {column.label}, {options.label}",
            [("", "Task")] + [("", f"{r.label} (n={cells[r].success.shape[0]})") for r in rows],
            body, notes))
    return tables, csv_rows


def iqm_table(grid: Grid, options: TableOptions):
    """IQM over (seed, task) success scores with a bootstrap over whole runs."""
    intervals = {key: stats.iqm_ci(s.success, n_resamples=options.n_resamples,
                                   seed=options.seed) for key, s in grid.at.items()}
    body, csv_rows = [], []
    for row in grid.rows:
        line = [row.label]
        for column in grid.columns:
            record = _base_record(row, column, options)
            interval = intervals.get((row, column))
            if interval is None:
                line.append(Entry(MISSING))
                csv_rows.append({**record, "status": "missing", "n": 0})
                continue
            n = grid.get(row, column).success.shape[0]
            best = _best({r: iv.estimate for (r, c), iv in intervals.items() if c == column})
            text = f"{pct(interval.estimate)} {interval_text(interval.low, interval.high)}"
            line.append(Entry(text, bold=row in best, n=n))
            csv_rows.append({**record, "status": "finished", "n": n,
                             "iqm_pct": 100 * interval.estimate,
                             "ci_low_pct": nan_if_none(interval.low, 100),
                             "ci_high_pct": nan_if_none(interval.high, 100)})
        body.append(line)
    notes = [f"Interquartile mean (%) of all (seed, task) success rates at the "
             f"{options.label}, with a 95% percentile bootstrap over whole runs (each "
             f"resample draws seeds with replacement and keeps all their tasks; "
             f"{options.n_resamples} resamples, seed {options.seed}). With few seeds such an "
             "interval is narrower than its nominal level; n/a below 2 seeds. — = no "
             "finished run; bold = best in the column."]
    return [Table("iqm", f"IQM success rate (%), {options.label}",
                  [("", "Method")] + [("", c.label) for c in grid.columns], body, notes)], \
        csv_rows


# ---------------------------------------------------------------------------- aggregates

#: thresholds of the performance-profile columns (success rates; the figure draws them all)
PROFILE_TAUS = (0.25, 0.5, 0.75)


def aggregates_table(grid: Grid, options: TableOptions):
    """rliable's optimality gap and points of the performance profile per row x column, each
    with a percentile bootstrap over whole runs."""
    columns = [("", "Method")]
    for column in grid.columns:
        columns += [(column.label, "optimality gap (pp)")]
        columns += [(column.label, f"runs × tasks > {round(100 * t)}% (%)")
                    for t in PROFILE_TAUS]
    body, csv_rows = [], []
    gaps = {key: stats.optimality_gap_ci(s.success, n_resamples=options.n_resamples,
                                         seed=options.seed) for key, s in grid.at.items()}
    for row in grid.rows:
        line = [row.label]
        for column in grid.columns:
            record = _base_record(row, column, options)
            scores = grid.get(row, column)
            if scores is None:
                line += [Entry(MISSING)] * (1 + len(PROFILE_TAUS))
                csv_rows.append({**record, "status": "missing", "n": 0})
                continue
            n = scores.success.shape[0]
            gap = gaps[(row, column)]
            lowest = {r for r in grid.rows if (r, column) in gaps
                      and math.isclose(gaps[(r, column)].estimate,
                                       min(g.estimate for (_, c), g in gaps.items()
                                           if c == column), abs_tol=1e-9)}
            line.append(Entry(f"{pct(gap.estimate)} {interval_text(gap.low, gap.high)}",
                              bold=row in lowest, n=n))
            profile = stats.performance_profile_ci(scores.success, PROFILE_TAUS,
                                                   n_resamples=options.n_resamples,
                                                   seed=options.seed)
            record.update({"cell": scores.cell.id, "status": "finished", "n": n,
                           "optimality_gap_pct": 100 * gap.estimate,
                           "optimality_gap_ci_low_pct": nan_if_none(gap.low, 100),
                           "optimality_gap_ci_high_pct": nan_if_none(gap.high, 100)})
            for index, tau in enumerate(PROFILE_TAUS):
                low = None if profile.low is None else profile.low[index]
                high = None if profile.high is None else profile.high[index]
                line.append(Entry(f"{pct(profile.fraction[index])} {interval_text(low, high)}"))
                key = f"above_{round(100 * tau)}_pct"
                record.update({key: 100 * profile.fraction[index],
                               f"{key}_ci_low": nan_if_none(low, 100),
                               f"{key}_ci_high": nan_if_none(high, 100)})
            csv_rows.append(record)
        body.append(line)
    notes = [
        f"Success at the {options.label}. Optimality gap = 100% − the mean over all (seed, "
        "task) success rates (capped at 100%, so here 100 − their mean), in percentage "
        "points: lower is better; bold = lowest in the column.",
        "runs × tasks > τ = the share of all (seed, task) success rates above τ: points of "
        "the performance profile (the figure performance_profiles_* draws the whole curve).",
        f"Intervals: 95% percentile bootstrap over whole runs (each resample draws seeds "
        f"with replacement and keeps all their tasks; {options.n_resamples} resamples, seed "
        f"{options.seed}); n/a below 2 seeds; narrower than nominal with few seeds. — = no "
        "finished run.",
    ]
    return [Table("aggregates", f"Optimality gap and performance profile, {options.label}",
                  columns, body, notes)], csv_rows


def _poi_entry(x: np.ndarray, y: np.ndarray, options: TableOptions) -> tuple[Entry, dict]:
    interval = stats.probability_of_improvement_ci(x, y, n_resamples=options.n_resamples,
                                                   seed=options.seed)
    text = f"{number(interval.estimate)} {interval_text(interval.low, interval.high, 1.0)}"
    above = interval.low is not None and (interval.low > 0.5 or interval.high < 0.5)
    return Entry(text, bold=above), {
        "p_improvement": interval.estimate,
        "p_improvement_ci_low": nan_if_none(interval.low),
        "p_improvement_ci_high": nan_if_none(interval.high),
        "interval_excludes_half": above, "n_x": x.shape[0], "n_y": y.shape[0]}


def pairwise_rows(grid: Grid, options: TableOptions) -> list[Row]:
    """The rows compared pairwise: ``options.pairwise`` (methods or row labels) or every
    method's main variant that is not an ablation."""
    if options.pairwise is not None:
        return [r for r in grid.rows if r.label in options.pairwise
                or (r.method in options.pairwise and r.label == r.method)]
    return [r for r in grid.rows if r.role != "ablation" and r.label == r.method]


def poi_table(grid: Grid, options: TableOptions):
    """P(row > the column's reference) for every row, then per column P(X > Y) for every
    pair of the chosen rows; run-level bootstrap intervals."""
    fixed = grid.fixed_suites()
    references = reference_rows(fixed, [r for r in fixed.rows if r.role != "ablation"],
                                options)
    columns = [("", "Method")] + [
        ("", f"{c.label}: P(row > {references[c].label})" if c in references
         else f"{c.label} (no reference)") for c in fixed.columns]
    body, csv_rows = [], []
    for row in fixed.rows:
        line = [row.label]
        for column in fixed.columns:
            scores, reference = fixed.get(row, column), references.get(column)
            record = {**_base_record(row, column, options), "comparison": "vs reference",
                      "other": reference.label if reference else None}
            if scores is None or reference is None:
                line.append(Entry(MISSING))
                continue
            if row == reference:
                line.append(Entry("reference"))
                continue
            entry, values = _poi_entry(scores.success, fixed.get(reference, column).success,
                                       options)
            line.append(entry)
            csv_rows.append({**record, **values})
        body.append(line)
    how = ("the row given with --reference" if options.reference else
           "the reference of table1: the baseline with the highest mean among those with at "
           "least 2 seeds")
    notes = [
        f"P(row > reference) at the {options.label}: per task, the probability that a seed "
        "of the row scores above a seed of the reference (ties count one half), averaged "
        "over tasks (rliable's probability of improvement); 0.5 = no difference.",
        f"[low, high]: 95% percentile bootstrap resampling the seeds of each side as whole "
        f"runs ({options.n_resamples} resamples, seed {options.seed}); n/a below 2 seeds a "
        "side; bold = the interval excludes 0.5. Not adjusted for multiple comparisons and "
        "narrower than nominal with few seeds: table1's Welch test is the primary one.",
        f"Reference per column: {how}.",
    ]
    tables = [Table("poi", f"Probability of improvement over the reference, {options.label}",
                    columns, body, notes)]
    chosen = pairwise_rows(fixed, options)
    for column in fixed.columns:
        present = [r for r in chosen if fixed.get(r, column)]
        if len(present) < 2:
            continue
        rows = []
        for x in present:
            line = [x.label]
            for y in present:
                if x == y:
                    line.append(Entry(MISSING))
                    continue
                entry, values = _poi_entry(fixed.get(x, column).success,
                                           fixed.get(y, column).success, options)
                line.append(entry)
                csv_rows.append({**_base_record(x, column, options), "comparison": "pairwise",
                                 "other": y.label, **values})
            rows.append(line)
        tables.append(Table(
            "poi_pairwise", f"P(row > column), {column.label}, {options.label}",
            [("", "P(row > column)")] + [("", r.label) for r in present], rows,
            ["P(X > Y) of the row X over the column Y with its 95% run-level bootstrap "
             "interval, as in the table above; bold = the interval excludes 0.5. Rows: "
             + ("those given with --pairwise." if options.pairwise is not None else
                "every method's main variant except ablations (--pairwise chooses).")]))
    return tables, csv_rows


# ---------------------------------------------------------------------------- mask dynamics


def run_mask_dynamics(run: RunRecord) -> dict | None:
    """One run's mask statistics from its "mask" records; None when it has none."""
    records = [r for r in MetricsLog(run.path / "metrics.jsonl").records("mask")
               if r.get("sparsity")]
    if not records:
        return None
    last = records[-1]

    def per_update(key: str) -> float:
        values = [np.mean(r[key]) for r in records if r.get(key) is not None]
        return float(np.mean(values)) if values else math.nan

    entries = last.get("entries")
    conflicted, recovered = per_update("conflicted"), per_update("recovered")
    movement = (run.results or {}).get("masks") or {}  # final.json, since it was recorded
    return {
        "updates": len(records),
        "final_sparsity": float(np.mean(last["sparsity"])),
        "final_soft_share": float(np.mean(last.get("soft_share", [math.nan]))),
        "final_mean_soft_value": _nanmean(last.get("mean_soft_value")),
        "conflicted_per_update": conflicted,
        "recovered_per_update": recovered,
        "conflicted_share": conflicted / entries if entries else math.nan,
        "recovered_share": recovered / entries if entries else math.nan,
        "moved": _nanmean(movement.get("moved")),
        "overlap": _nanmean([movement.get("overlap")]),
    }


def _nanmean(values) -> float:
    """Mean of the defined (not None, not NaN) values; NaN when there are none."""
    defined = [float(v) for v in values or () if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


MASK_COLUMNS = (
    ("updates", "updates", 1.0, 0),
    ("final_sparsity", "final sparsity (%)", 100.0, 2),
    ("final_soft_share", "soft entries (%)", 100.0, 4),
    ("final_mean_soft_value", "mean soft value", 1.0, 3),
    ("conflicted_per_update", "conflicted / update", 1.0, 1),
    ("recovered_per_update", "recovered / update", 1.0, 1),
    ("conflicted_share", "conflicted / update (% of entries)", 100.0, 4),
    ("recovered_share", "recovered / update (% of entries)", 100.0, 4),
    ("moved", "moved from start (%)", 100.0, 3),
    ("overlap", "task overlap (Jaccard)", 1.0, 3),
)


def mask_dynamics_table(cells: list[Cell], options: TableOptions):
    """Per column, every masked row: how its masks moved (none of the papers reports this)."""
    grouped: dict[Column, dict[Row, list[dict]]] = {}
    for cell in cells:
        values = [v for v in (run_mask_dynamics(run) for run in cell.runs) if v is not None]
        if values:
            grouped.setdefault(cell.column, {})[cell.row] = values
    tables, csv_rows = [], []
    for column in sorted(grouped, key=column_key):
        body = []
        for row in sorted(grouped[column], key=row_key):
            values = grouped[column][row]
            line = [row.label, str(len(values))]
            record = {**_base_record(row, column, options), "n": len(values)}
            for key, _, scale, digits in MASK_COLUMNS:
                seeds = np.array([v[key] for v in values], dtype=float)
                if np.all(np.isnan(seeds)):
                    line.append(MISSING)
                    record[f"mean_{key}"] = record[f"std_{key}"] = math.nan
                    continue
                text = number(scale * np.nanmean(seeds), digits)
                if len(seeds) > 1:
                    text += f" ± {number(scale * np.nanstd(seeds, ddof=1), digits)}"
                line.append(text)
                record[f"mean_{key}"] = float(np.nanmean(seeds))
                record[f"std_{key}"] = (float(np.nanstd(seeds, ddof=1)) if len(seeds) > 1
                                        else math.nan)
            body.append(line)
            csv_rows.append(record)
        tables.append(Table(
            "mask_dynamics", f"Mask dynamics, {column.label}",
            [("", "Method"), ("", "seeds")] + [("", title) for _, title, _, _ in MASK_COLUMNS],
            body,
            ["Per run, at the last mask update, mean over tasks: sparsity = share of maskable "
             "entries with M < 1 (absent from the task's forward pass); soft entries = share "
             "with 0 < M < 1 (absent but still updated) and mean soft value = their mean M "
             "(— for hard masks). Conflicted / recovered = entries per task per update (mean "
             "over updates and tasks; HarmoDT: its k pruned / regrown). Moved from start = "
             "share of entries whose use (M = 1) differs from the initial mask at the end of "
             "training, mean over tasks; task overlap = mean over task pairs of the Jaccard "
             "index of the entries they use (1: one mask for all tasks); both from final.json "
             "(— for runs made before they were recorded). Mean ± sample std over seeds. "
             "Methods without masks have no rows."]))
    if not tables:
        tables.append(Table("mask_dynamics", "Mask dynamics", [("", "Method")], [],
                            ["No run here has mask records."]))
    return tables, csv_rows


# ---------------------------------------------------------------------------- outputs


def long_rows(cells: list[Cell]) -> list[dict]:
    """runs_long.csv: one row per run x task with final and best success and return."""
    rows = []
    for cell in cells:
        for run in cell.runs:
            final, best = run.results.get("final", {}), run.results.get("best", {})
            for task in run.results.get("tasks", []):
                rows.append({
                    "suite": cell.column.suite, "quality": cell.column.quality,
                    "column": cell.column.label, "protocol": cell.column.protocol,
                    "method": cell.row.method, "row": cell.row.label,
                    "variant": cell.row.variant, "cell": cell.id,
                    "seed": run.seed, "task": task,
                    "final_success": final.get("success", {}).get(task, math.nan),
                    "final_return": final.get("return", {}).get(task, math.nan),
                    "best_success": best.get("success", {}).get(task, math.nan),
                    "best_return": best.get("return", {}).get(task, math.nan),
                    "best_step": best.get("step", math.nan)})
    return rows


def left_out_lines(left_out: list[tuple[RunRecord, str]]) -> list[str]:
    return sorted(f"{run.label()} ({run.path}): {reason}" for run, reason in left_out)


def _left_out_markdown(lines: list[str]) -> str:
    if not lines:
        return "\nRuns left out: none.\n"
    return "\nRuns left out:\n" + "".join(f"- {line}\n" for line in lines)


def write_tables(out: Path, name: str, tables: list[Table], csv_rows: list[dict],
           left_out: list[str]) -> tuple[str, list[Path]]:
    markdown = "\n".join(t.markdown() for t in tables) + _left_out_markdown(left_out)
    latex = ("% mtrl-bench tables; needs \\usepackage{booktabs}\n"
             + "".join(f"% left out: {line.encode('ascii', 'replace').decode()}\n"
                       for line in left_out)
             + "\n".join(t.latex() for t in tables))
    files = []
    for suffix, text in (("md", markdown), ("csv", csv_text(csv_rows)), ("tex", latex)):
        files.append(_write_file(out / f"{name}.{suffix}", text))
    return markdown, files


def _write_file(path: Path, text: str) -> Path:
    try:
        atomic_write_text(path, text)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create results dir {out}: {err.strerror or err}") from None
    if not out.is_dir():
        raise UserError(f"results dir {out} is not a directory")


def finished_runs_or_error(runs_dir: Path) -> list[RunRecord]:
    if not runs_dir.is_dir():
        raise UserError(f"no finished runs: {runs_dir} does not exist (run `mtrl-bench run` "
                        "first, or point --runs at a results/runs folder)")
    runs = scan_runs(runs_dir)
    if not any(run.status == "finished" for run in runs):
        found = f" ({len(runs)} unfinished)" if runs else ""
        raise UserError(f"no finished runs under {runs_dir}{found}: a run counts when "
                        "meta.json says finished and final.json exists")
    return runs


def _check_names(options: TableOptions, cells: list[Cell]) -> None:
    labels = {c.row.label for c in cells} | {c.row.method for c in cells}
    names = [*(options.baselines or ()), *([options.reference] if options.reference else []),
             *(options.pairwise or ())]
    unknown = [name for name in names if name not in labels]
    if unknown:
        raise UserError(f"unknown method or row {unknown[0]!r}; rows with finished runs: "
                        + ", ".join(sorted({c.row.label for c in cells})))


def build_tables(runs_dir: Path, out: Path, options: TableOptions) -> tuple[str, list[Path]]:
    """Write every table for ``options.metric``; returns (all Markdown, files written).

    With the headline metric (final) Table 1 is also written for the best evaluation, as
    table1_best, so both numbers exist and are never confused.
    """
    runs = finished_runs_or_error(runs_dir)
    cells, left_out = group_cells(runs, options.metric)  # the one selection of runs
    _check_names(options, cells)
    prepare_out(out)
    suffix = "" if options.metric == "final" else f"_{options.metric}"
    reference, missing_reference = paper.reference_or_none(options.paper_reference)
    builders = [("table1", table1),
                ("table2", lambda grid, o: paper.table2(grid, o, reference or [])),
                ("table3", paper.table3), ("table4", table4), ("per_task", per_task_table),
                ("iqm", iqm_table), ("aggregates", aggregates_table), ("poi", poi_table)]
    if reference:
        builders.append(("paper", lambda grid, o: paper.paper_comparison(grid, o, reference)))
    else:
        print(f"note: {missing_reference}")
    outputs, files = [], []
    metrics = [options] + ([dataclasses.replace(options, metric="best")]
                           if options.metric == "final" else [])
    for metric_options in metrics:
        scores, unusable = cell_scores(cells, metric_options.metric)
        lines = left_out_lines(left_out + unusable)
        if not scores:
            if metric_options is options:
                raise UserError(f"no usable finished runs under {runs_dir}: final.json has no "
                                f"usable {options.metric!r} scores")
            outputs.append("(table1_best not written: no final.json has a 'best' block)\n")
            continue
        grid = Grid(scores)
        for name, build in builders:
            if metric_options is not options:  # the best evaluation: Table 1 only
                if name != "table1":
                    continue
                name = "table1_best"
            else:
                name += suffix
            tables, rows = build(grid, metric_options)
            markdown, written = write_tables(out, name, tables, rows, lines)
            outputs.append(markdown)
            files += written
    if options.metric == "final":
        tables, rows = mask_dynamics_table(cells, options)
        markdown, written = write_tables(out, "mask_dynamics", tables, rows,
                                         left_out_lines(left_out))
        outputs.append(markdown)
        files += written
        files.append(_write_file(out / "runs_long.csv", csv_text(long_rows(cells))))
    return "\n".join(outputs), files
