"""Planned comparisons: the pairs of rows an experiment named before its runs (results/README
"Questions and plan"), tested as one family each.

A plan is a TOML file of families::

    [[family]]
    name = "E2"                                  # the output's file name
    pairs = [["shared-mask", "random-masks"], ["random-masks{initial_sparsity=0.05}",
             "random-masks"]]
    columns = ["MT5 near-optimal"]    # optional: labels, "[k]" suffixes ignored; default all
    where = {"run.budget_sequences" = 112000}   # optional: protocol values the columns have
    every_evaluation = true   # optional: also each pair on the fixed goals at every evaluation

A row is named by its table label, or as ``method{param=value, ...}``: the one row of that
method whose own parameters hold those values (as the tables print them). Each pair is
tested in every chosen column where both rows have runs: Welch's t over per-seed means
(the primary test, as in Table 1), Benjamini-Hochberg over the family's defined p-values,
the arrow when at least ``min_seeds`` a side, adjusted p < 0.05 and the interval excludes 0;
the paired-by-seed interval beside it where the records show shared streams.

With ``every_evaluation``, ``<name>_every_evaluation.*`` adds each pair's difference on the
periodic evaluations' fixed goal set (goals 0..n-1 of every task, the final evaluation's
read from episodes.json) at every evaluation both cells made: a secondary analysis, so its
intervals are not adjusted and carry no verdict.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mtrl_bench.analysis import stats
from mtrl_bench.analysis.cells import Column, Row, fixed_goal_by_step, group_cells
from mtrl_bench.analysis.grid import CellScores, Grid, TableOptions, cell_scores
from mtrl_bench.analysis.render import MISSING, Table, fmt_p, interval_text, nan_if_none, pct
from mtrl_bench.analysis.tables import (
    ALPHA,
    finished_runs_or_error,
    left_out_lines,
    paired_by_seed,
    prepare_out,
    write_tables,
)
from mtrl_bench.errors import UserError
from mtrl_bench.identity import format_value
from mtrl_bench.runs.rundir import MetricsLog

_SPEC = re.compile(r"^(?P<method>[^{}]+)\{(?P<params>[^{}]*)\}$")


@dataclass(frozen=True)
class Family:
    name: str
    pairs: tuple[tuple[str, str], ...]
    columns: tuple[str, ...] | None = None  # column labels; None: every column
    where: tuple[tuple[str, object], ...] = ()  # protocol entries the columns must have
    every_evaluation: bool = False  # also the pairs at every fixed-goal evaluation


def load_plan(path: Path) -> list[Family]:
    """The families of a plan file, checked for shape (not yet against the runs)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"cannot read the plan {path}: {err}") from None
    families = []
    for entry in data.get("family", []):
        name, pairs = entry.get("name"), entry.get("pairs")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise UserError(f"{path}: every [[family]] needs a name of letters, digits, '.', "
                            f"'_' or '-', got {name!r}")
        if not pairs or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise UserError(f"{path}: family {name!r} needs pairs = [[\"row A\", \"row B\"], "
                            "...]")
        columns, where = entry.get("columns"), entry.get("where", {})
        if not isinstance(where, dict):
            raise UserError(f"{path}: family {name!r}: where = {{\"run.budget_sequences\" = "
                            "112000, ...}} (protocol entries)")
        every_evaluation = entry.get("every_evaluation", False)
        if not isinstance(every_evaluation, bool):
            raise UserError(f"{path}: family {name!r}: every_evaluation = true or false")
        families.append(Family(name, tuple((str(a), str(b)) for a, b in pairs),
                               tuple(columns) if columns else None, tuple(where.items()),
                               every_evaluation))
    if not families:
        raise UserError(f"{path}: no [[family]] in it")
    return families


def find_row(grid: Grid, spec: str) -> Row | None:
    """The row a plan names (its label, or ``method{param=value, ...}``); None when no row
    with runs is named so (not run yet, or misspelt: the table says which)."""
    by_label = [r for r in grid.rows if r.label == spec]
    if by_label:
        return by_label[0]
    match = _SPEC.match(spec.strip())
    if match is None:
        return None
    method = match["method"].strip()
    wanted = dict(item.split("=", 1) for item in
                  (part.strip() for part in match["params"].split(",")) if item)
    wanted = {k.strip(): v.strip() for k, v in wanted.items()}
    identities = {r: s.cell.identity["method"] for (r, _), s in grid.at.items()}
    found = sorted({r for r, own in identities.items() if r.method == method and all(
        k in own and format_value(own[k]) == v for k, v in wanted.items())},
        key=lambda r: r.label)
    if len(found) > 1:
        raise UserError(f"{spec!r} names {len(found)} rows ({', '.join(r.label for r in found)})"
                        "; name one row")
    return found[0] if found else None


class Tested(NamedTuple):
    """A pair tested in a column."""

    column: Column
    a: Row
    b: Row
    scores_a: CellScores
    scores_b: CellScores
    paired_by_seed: bool  # the records show shared streams for two or more common seeds


def family_table(grid: Grid, family: Family,
                 options: TableOptions) -> tuple[list[Table], list, list[Tested]]:
    """One family's comparisons as a table, its CSV rows and the pairs it tested."""
    cells = {s.column: s.cell for s in grid.at.values()}
    labels = {c: re.sub(r" \[\d+\]$", "", c.label) for c in grid.columns}
    unknown = set(family.columns or ()) - set(labels.values()) - {c.label for c in grid.columns}
    if unknown:
        raise UserError(f"family {family.name}: no column {sorted(unknown)[0]!r}; columns: "
                        + ", ".join(c.label for c in grid.columns))
    columns = [c for c in grid.columns
               if (family.columns is None or labels[c] in family.columns
                   or c.label in family.columns)
               and cells[c].has_protocol(family.where)]
    tests = []  # (column, row a, row b, Comparison, paired interval or None)
    tested: list[Tested] = []
    missing, unnamed = [], []
    for spec_a, spec_b in family.pairs:
        a, b = find_row(grid, spec_a), find_row(grid, spec_b)
        if a is None or b is None:
            unnamed.append((spec_a, spec_b, spec_a if a is None else spec_b))
            continue
        for column in columns:
            sa, sb = grid.get(a, column), grid.get(b, column)
            if sa is None or sb is None:
                missing.append((column, a, b))
                continue
            shared = paired_by_seed(sa, sb)
            tested.append(Tested(column, a, b, sa, sb, shared is not None))
            tests.append((column, a, b, stats.compare(sa.success, sb.success, a.label, b.label),
                          None if shared is None else stats.paired_diff_ci(*shared)))
    adjusted = stats.fdr_adjust([t[3].p_welch for t in tests])
    body, csv_rows = [], []
    for (column, a, b, comp, pair), p_adj in zip(tests, adjusted):
        powered = min(comp.n_method, comp.n_baseline) >= options.min_seeds
        significant = p_adj is not None and p_adj < ALPHA and comp.diff.excludes_zero()
        verdict = ("↑ A higher" if comp.diff.estimate > 0 else "↓ A lower") \
            if powered and significant else (
            "under-powered" if not powered else "not significant")
        body.append([column.label, a.label, b.label, pct(comp.diff.estimate, signed=True),
                     interval_text(comp.diff.low, comp.diff.high), fmt_p(comp.p_welch),
                     fmt_p(p_adj), f"{comp.n_method} vs {comp.n_baseline}", verdict,
                     MISSING if pair is None else interval_text(pair.low, pair.high)])
        csv_rows.append({
            "family": family.name, "column": column.label, "row_a": a.label,
            "row_b": b.label, "n_a": comp.n_method, "n_b": comp.n_baseline,
            "diff_pct": 100 * comp.diff.estimate,
            "diff_ci_low_pct": nan_if_none(comp.diff.low, 100),
            "diff_ci_high_pct": nan_if_none(comp.diff.high, 100),
            "p_welch": nan_if_none(comp.p_welch), "p_welch_bh": nan_if_none(p_adj),
            "verdict": verdict,
            "paired_diff_ci_low_pct": nan_if_none(pair and pair.low, 100),
            "paired_diff_ci_high_pct": nan_if_none(pair and pair.high, 100)})
    notes = [
        f"Planned family {family.name}: Δ = A − B, success rate in percentage points at the "
        f"{options.label}, with the 95% Welch t-interval over per-seed means; Welch p "
        f"adjusted by Benjamini-Hochberg over the family's {sum(p is not None for p in adjusted)}"
        f" defined p-values; ↑/↓ at ≥ {options.min_seeds} seeds a side, adjusted p < {ALPHA} "
        "and an interval that excludes 0.",
        "Paired by seed (secondary): the t-interval of the mean per-seed difference, only "
        "where the two cells' records show the same initial weights and batch stream.",
        *([] if columns else [f"Not tested: no column has the protocol values "
                                f"{dict(family.where)} (no runs yet)."]),
        *[f"Not tested, no row named {name!r} has runs (not run yet, or misspelt): "
          f"{a} vs {b}." for a, b, name in unnamed],
        *[f"Not tested, a side has no runs: {a.label} vs {b.label} in {c.label}."
          for c, a, b in missing],
    ]
    table = Table(family.name, f"Planned comparisons {family.name}, {options.label}",
                  [("", h) for h in ("Column", "A", "B", "Δ (pp)", "95% CI (Welch)",
                                     "Welch p", "Welch p (BH, family)", "Seeds", "Verdict",
                                     "95% CI paired by seed")],
                  body, notes)
    return [table], csv_rows, tested


def _fixed_goal_curves(scores: CellScores) -> dict[int, dict[int, float]]:
    """{step: {seed: success on the fixed goal set}} of the cell's scored seeds."""
    records = [MetricsLog(run.path / "metrics.jsonl").records() if run.seed in scores.seeds
               else [] for run in scores.cell.runs]
    return fixed_goal_by_step(scores.cell, records, scores.seeds)


def evaluation_table(family: Family, tested: list[Tested]) -> tuple[list[Table], list]:
    """Secondary: each tested pair's difference on the fixed goals at every evaluation both
    cells made (Welch over per-seed values; paired by seed where the streams are shared)."""
    body, csv_rows, goal_counts = [], [], set()
    for column, a, b, sa, sb, pairable in tested:
        protocol = sa.cell.identity["protocol"]
        goal_counts.add(protocol.get("run.eval_goals"))
        budget, total = protocol.get("run.budget_sequences"), protocol.get("trainer.total_steps")
        for point in stats.differences_by_step(_fixed_goal_curves(sa), _fixed_goal_curves(sb),
                                               paired=pairable):
            step, diff, pair = point.step, point.welch, point.paired
            sequences = round(step * budget / total) if budget and total else None
            body.append([column.label, a.label, b.label, str(step),
                         MISSING if sequences is None else f"{sequences:,}",
                         pct(diff.estimate, signed=True), interval_text(diff.low, diff.high),
                         MISSING if pair is None else interval_text(pair.low, pair.high),
                         f"{point.n_a} vs {point.n_b}"])
            csv_rows.append({
                "family": family.name, "column": column.label, "row_a": a.label,
                "row_b": b.label, "step": step, "sequences": sequences,
                "eval_goals": protocol.get("run.eval_goals"), "n_a": point.n_a, "n_b": point.n_b,
                "diff_pct": 100 * diff.estimate,
                "diff_ci_low_pct": nan_if_none(diff.low, 100),
                "diff_ci_high_pct": nan_if_none(diff.high, 100),
                "paired_diff_ci_low_pct": nan_if_none(pair and pair.low, 100),
                "paired_diff_ci_high_pct": nan_if_none(pair and pair.high, 100)})
    goals = ", ".join(str(g) for g in sorted(goal_counts - {None}))
    goal_set = (f"the first {goals} goals of every task" if goals
                else "the periodic evaluations' goals")
    notes = [
        f"Secondary to family {family.name}: Δ = A − B in percentage points on the fixed "
        f"goal set ({goal_set}) at every evaluation both cells "
        "made, the final one read from its episodes; 95% Welch t-interval over per-seed "
        "values, and paired by seed where the records show shared streams. Not adjusted for "
        "multiplicity and without verdicts: the primary test is the family's final "
        "comparison.",
        *([] if tested else ["No pair of the family has runs yet."])]
    table = Table(f"{family.name}_every_evaluation",
                  f"{family.name} at every evaluation, fixed goals (secondary)",
                  [("", h) for h in ("Column", "A", "B", "Step", "Sequences", "Δ (pp)",
                                     "95% CI (Welch)", "95% CI paired by seed", "Seeds")],
                  body, notes)
    return [table], csv_rows


def build_planned(runs_dir: Path, out: Path, plan: Path,
                  options: TableOptions) -> tuple[str, list[Path]]:
    """Every family of ``plan`` over the runs under ``runs_dir``, one table file set per
    family in ``out``; returns (all Markdown, files written)."""
    families = load_plan(plan)
    runs = finished_runs_or_error(runs_dir)
    cells, left_out = group_cells(runs, options.metric)
    scores, unusable = cell_scores(cells, options.metric)
    if not scores:
        raise UserError(f"no usable finished runs under {runs_dir}")
    grid = Grid(scores).fixed_suites()
    prepare_out(out)
    outputs, files = [], []
    left = left_out_lines(left_out + unusable)
    for family in families:
        tables, rows, tested = family_table(grid, family, options)
        outputs_of_family = [(family.name, tables, rows)]
        if family.every_evaluation:
            outputs_of_family.append((f"{family.name}_every_evaluation",
                                      *evaluation_table(family, tested)))
        for name, tables, rows in outputs_of_family:
            markdown, written = write_tables(out, name, tables, rows, left)
            outputs.append(markdown)
            files += written
    return "\n".join(outputs), files
