"""The scores tables and figures are made of: each cell's per-seed, per-task numbers for
one metric (:class:`CellScores`), addressed by row and column (:class:`Grid`), and the
options every table takes (:class:`TableOptions`). Shared by ``tables``, ``paper`` and
``plots``, so none of them imports another to get at these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtrl_bench.analysis import stats
from mtrl_bench.analysis.cells import (
    Cell,
    Column,
    Row,
    column_key,
    row_key,
    run_scores,
    unusable_reason,
)
from mtrl_bench.errors import UserError
from mtrl_bench.suites import random_suite_size

DEFAULT_MIN_SEEDS = 5
METRIC_LABELS = {
    "final": "final checkpoint",
    "best": "best over evaluations (HarmoDT's max over evaluations; not the headline)",
}


# ---------------------------------------------------------------------------- scores


@dataclass
class CellScores:
    """A cell's numbers for one metric: arrays of shape (seeds, tasks)."""

    cell: Cell
    tasks: list[str]
    seeds: list[int]
    success: np.ndarray
    returns: np.ndarray

    @property
    def row(self) -> Row:
        return self.cell.row

    @property
    def column(self) -> Column:
        return self.cell.column


def cell_scores(cells: list[Cell], metric: str):
    """(scores of every cell with usable runs, [(run, why it was left out)]). The cells come
    from :func:`group_cells`, which already left out runs unusable for the headline metric;
    ``metric`` "best" (table1_best) may leave out more."""
    out, left_out = [], []
    for cell in cells:
        tasks, seeds, success, returns = None, [], [], []
        for run in cell.runs:
            reason = unusable_reason(run, metric)
            if reason is not None:
                left_out.append((run, reason))
                continue
            run_tasks, s, r = run_scores(run, metric)
            if tasks is None:
                tasks = run_tasks
            order = [run_tasks.index(t) for t in tasks]
            seeds.append(run.seed)
            success.append(s[order])
            returns.append(r[order])
        if seeds:
            out.append(CellScores(cell, tasks, seeds, np.stack(success), np.stack(returns)))
    return out, left_out


class Grid:
    """Cell scores addressed by (row, column), with rows and columns in display order."""

    def __init__(self, scores: list[CellScores]):
        self.columns = sorted({s.column for s in scores}, key=column_key)
        self.rows = sorted({s.row for s in scores}, key=row_key)
        self.at = {(s.row, s.column): s for s in scores}

    def get(self, row: Row, column: Column) -> CellScores | None:
        return self.at.get((row, column))

    def fixed_suites(self) -> Grid:
        """The columns of fixed suites (MT5, MT30, ...) when there are any: random-K:SEED
        draws are aggregated in Table 3 instead."""
        fixed = [s for key, s in self.at.items() if random_suite_size(key[1].suite) is None]
        return Grid(fixed) if fixed else self


@dataclass
class TableOptions:
    metric: str = "final"
    baselines: tuple[str, ...] | None = None  # None: the rows whose runs record role baseline
    reference: str | None = None  # a row label; None: the best baseline of each column
    min_seeds: int = DEFAULT_MIN_SEEDS
    n_resamples: int = stats.DEFAULT_RESAMPLES
    seed: int = 0
    paper_reference: Path | None = None  # the paper's numbers (default: the repository's)
    pairwise: tuple[str, ...] | None = None  # rows of the pairwise P(X > Y) tables; None:
    # every method's main variant that is not an ablation

    def __post_init__(self):
        if self.metric not in METRIC_LABELS:
            raise UserError(f"unknown metric {self.metric!r}; valid: {', '.join(METRIC_LABELS)}")
        if self.n_resamples < 100:
            raise UserError(f"--resamples must be at least 100, got {self.n_resamples}")
        if self.min_seeds < 2:
            raise UserError(f"--min-seeds must be at least 2, got {self.min_seeds}")

    def is_baseline(self, row: Row) -> bool:
        if self.baselines is None:
            return row.role == "baseline"
        return row.method in self.baselines or row.label in self.baselines

    @property
    def label(self) -> str:
        return METRIC_LABELS[self.metric]


def reference_rows(grid: Grid, rows: list[Row], options: TableOptions) -> dict[Column, Row]:
    """Per column the reference baseline: ``options.reference`` where it has runs, else the
    baseline row with the highest mean among those with at least 2 seeds."""
    references = {}
    for column in grid.columns:
        present = {r.label: grid.get(r, column).success for r in rows if grid.get(r, column)}
        if options.reference is not None:
            label = options.reference if options.reference in present else None
        else:  # main variants only: picking among a baseline's sweep variants is cherry-picking
            label = stats.best_method(present, [
                r.label for r in rows if options.is_baseline(r) and r.label in present
                and (r.label == r.method or r.label in (options.baselines or ()))])
        if label is not None:
            references[column] = next(r for r in rows if r.label == label)
    return references
