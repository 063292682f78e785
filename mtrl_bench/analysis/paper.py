"""The SoCo-DT paper's own numbers, and the tables that set ours beside them.

``mtrl_bench/analysis/socodt-paper.csv`` holds the paper's Tables 1-4 as printed (one row per
value: table, row label as printed, our method key where we run that method, suite,
quality, metric, mean, ± and seeds). From it and the run directories, this module builds:

- Table 2: MT50 near/sub-optimal, our rows plus the paper's rows for methods we do not run
  (online CARE, PaCo, Soft-M, D2R; offline MTBC, MTIQL, MTDiff-P), marked as quoted and
  never part of any statistic;
- Table 3: random task combinations, our ``random-K:SEED`` runs aggregated by K (mean ±
  sample std over task draws of each draw's mean over its seeds; the per-draw numbers in a
  companion table), as the paper does for 5 and 30 tasks;
- the paper-vs-ours table: per published cell, ours, the paper's and the difference, with
  what differs in the protocol.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtrl_bench.analysis import stats
from mtrl_bench.analysis.cells import Column, column_key, row_key, suite_label
from mtrl_bench.analysis.grid import Grid, TableOptions
from mtrl_bench.analysis.render import MISSING, Entry, Table, number
from mtrl_bench.errors import UserError
from mtrl_bench.identity import digest
from mtrl_bench.suites import random_suite_size

#: installed with the package, so the comparison works outside a source checkout too
REFERENCE_FILE = Path(__file__).resolve().parent / "socodt-paper.csv"
PAPER_BUDGET = 8_000_000  # sequences: HarmoDT's 1M iterations x 8
QUOTED = "(quoted from the paper)"


@dataclass(frozen=True)
class PaperValue:
    table: int
    row: str  # as printed
    method: str  # our method key, "" where this suite does not run the method
    suite: str  # mt5 / mt30 / mt50, or random-K for Table 3
    quality: str
    metric: str  # success (%) or return
    mean: float
    pm: float | None  # the ± as printed (None where the paper prints none)
    seeds: int
    note: str

    def text(self) -> str:
        digits = 1 if self.metric == "return" else 2
        out = number(self.mean, digits)
        return out if self.pm is None else f"{out} ± {number(self.pm, digits)}"


def load_reference(path: Path = REFERENCE_FILE) -> list[PaperValue]:
    """The published numbers; a malformed file is a one-line error naming the line."""
    try:
        with open(path, newline="") as handle:
            lines = list(csv.DictReader(handle))
    except OSError as err:
        raise UserError(f"cannot read the paper's numbers {path}: {err.strerror}") from None
    values = []
    for number_, line in enumerate(lines, start=2):
        try:
            values.append(PaperValue(
                int(line["table"]), line["row"], line["method"], line["suite"],
                line["quality"], line["metric"], float(line["mean"]),
                float(line["pm"]) if line["pm"] else None, int(line["seeds"]),
                line["note"]))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{path}:{number_}: not a paper value ({err})") from None
    return values


# ---------------------------------------------------------------------------- Table 2


def table2(grid: Grid, options: TableOptions, reference: list[PaperValue]):
    """MT50, our rows and the paper's rows for methods this suite does not run."""
    columns = [c for c in grid.columns if c.suite == "mt50"]
    qualities = ["near-optimal", "sub-optimal"]
    if not columns:  # nothing run on MT50: the quoted rows alone, in the paper's columns
        columns = [Column("mt50", q, "", f"MT50 {q}") for q in qualities]
    rows = [r for r in grid.rows if r.role != "ablation"]
    body, csv_rows = [], []
    for row in rows:
        line = [row.label]
        for column in columns:
            scores = grid.get(row, column)
            if scores is None:
                line.append(Entry(MISSING))
                continue
            summary = stats.summarize(scores.success)
            text = number(100 * summary.mean)
            if summary.std is not None:
                text += f" ± {number(100 * summary.std)}"
            line.append(Entry(text, n=summary.n))
            csv_rows.append({"row": row.label, "column": column.label, "source": "ours",
                             "n": summary.n, "mean_success_pct": 100 * summary.mean,
                             "std_success_pct": math.nan if summary.std is None
                             else 100 * summary.std})
        body.append(line)
    quoted = [v for v in reference if v.table == 2 and not v.method]
    for label in dict.fromkeys(v.row for v in quoted):
        line = [f"{label} {QUOTED}"]
        for column in columns:
            value = next((v for v in quoted if v.row == label and v.quality == column.quality),
                         None)
            line.append(Entry(value.text() if value else MISSING))
            if value:
                csv_rows.append({"row": label, "column": column.label, "source": "paper",
                                 "n": value.seeds, "mean_success_pct": value.mean,
                                 "std_success_pct": value.pm, "note": value.note})
        body.append(line)
    notes = [f"Success rate (%) at the {options.label} on MT50, mean ± sample std over "
             "seeds (n); — = no finished run.",
             f"Rows marked {QUOTED} are the paper's Table 2 as printed (3 seeds, the paper's "
             "data and protocol, online methods included for reference): they are never "
             "part of a test, a reference or any other statistic."]
    return [Table("table2", f"MT50 success rate (%), {options.label}",
                  [("", "Method")] + [("", c.label) for c in columns], body, notes,
                  source="cf. SoCo-DT paper Table 2")], csv_rows


# ---------------------------------------------------------------------------- Table 3

#: identity keys that follow from which tasks a random suite drew
SUITE_DERIVED = ("run.suite", "dataset.tasks", "dataset.episodes", "dataset.fingerprint")


def _draw_groups(grid: Grid):
    """{(K, quality, protocol without the draw): {row: {suite: CellScores}}} of every
    random-K:SEED cell."""
    groups: dict = {}
    for (row, column), scores in grid.at.items():
        size = random_suite_size(column.suite)
        if size is None or row.role == "ablation":
            continue
        protocol = {k: v for k, v in scores.cell.identity["protocol"].items()
                    if k not in SUITE_DERIVED}
        key = (size, column.quality, digest(protocol))
        groups.setdefault(key, {}).setdefault(row, {})[column.suite] = scores
    return groups


def table3(grid: Grid, options: TableOptions):
    """Random task combinations, aggregated over task draws; returns (tables, csv rows)."""
    groups = _draw_groups(grid)
    keys = sorted(groups, key=lambda k: (k[0], k[1], k[2]))
    protocols = {}
    for size, quality, protocol in keys:
        protocols.setdefault((size, quality), []).append(protocol)
    rows = sorted({r for g in groups.values() for r in g}, key=row_key)

    def label(key):
        size, quality, protocol = key
        same = protocols[(size, quality)]
        tag = f" [{same.index(protocol) + 1}]" if len(same) > 1 else ""
        return f"{size} tasks {quality}{tag}"

    body, draw_body, csv_rows = [], [], []
    for row in rows:
        line = [row.label]
        for key in keys:
            draws = groups[key].get(row, {})
            if not draws:
                line.append(Entry(MISSING))
                continue
            per_draw = {suite: float(scores.success.mean()) for suite, scores in draws.items()}
            values = np.array(list(per_draw.values()))
            runs = sum(scores.success.shape[0] for scores in draws.values())
            text = number(100 * values.mean())
            if values.size > 1:
                text += f" ± {number(100 * values.std(ddof=1))}"
            line.append(Entry(f"{text} ({values.size} draws, {runs} runs)"))
            csv_rows.append({"row": row.label, "setting": label(key), "tasks": key[0],
                             "quality": key[1], "draws": values.size, "runs": runs,
                             "mean_success_pct": 100 * values.mean(),
                             "std_over_draws_pct": 100 * values.std(ddof=1)
                             if values.size > 1 else math.nan})
            for suite, value in sorted(per_draw.items()):
                n = draws[suite].success.shape[0]
                draw_body.append([label(key), suite, row.label, number(100 * value), str(n)])
        body.append(line)
    notes = ["Success rate (%) at the " + options.label + " over random-K:SEED suites "
             "(K tasks drawn with seed SEED): per draw the mean over its seeds (each seed's "
             "mean over the draw's tasks), then the mean ± sample std over draws. The paper "
             "reports HarmoDT-F and SoCo-DT for K = 5 and 30 with 3 draws."]
    main = Table("table3", f"Random task combinations, {options.label}",
                 [("", "Method")] + [("", label(k)) for k in keys], body, notes,
                 source="cf. SoCo-DT paper Table 3")
    draws = Table("table3_draws", "Random task combinations, per draw",
                  [("", h) for h in ("Setting", "Suite", "Method", "Success (%)", "Seeds")],
                  draw_body, ["Mean over seeds of each seed's mean over the draw's tasks."])
    if not keys:
        main.notes.append("No run on a random-K:SEED suite here.")
    return [main, draws], csv_rows


def table3_aggregates(grid: Grid) -> dict:
    """{(row label, K, quality): (mean, std over draws or None, draws)} for the
    comparison with the paper."""
    out = {}
    for (size, quality, _), rows in _draw_groups(grid).items():
        for row, draws in rows.items():
            values = np.array([float(s.success.mean()) for s in draws.values()])
            out[(row.label, size, quality)] = (
                float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else None,
                values.size)
    return out


# ---------------------------------------------------------------------------- ours vs paper


def _protocol_note(column: Column, grid: Grid) -> str:
    protocol = next(s.cell.identity["protocol"] for (_, c), s in grid.at.items()
                    if c == column)
    source = protocol.get("dataset.source", "generated")
    data = ("our generated data (scripted experts), not the paper's SAC replay buffers"
            if source == "generated" else f"the paper's data layout ({source})")
    budget = protocol.get("run.budget_sequences")
    budget_text = (f"{budget:,} training sequences ({budget / PAPER_BUDGET:.2%} of the "
                   "paper's 8M)" if budget else "budget unknown")
    return f"{column.label}: {data}; {budget_text}"


def paper_comparison(grid: Grid, options: TableOptions, reference: list[PaperValue]):
    """Every published cell of a method we run: ours, the paper's, ours − paper."""
    triple = table3_aggregates(grid)
    body, csv_rows, used = [], [], {}
    for value in reference:
        if not value.method or value.table == 2:  # Table 2's mapped rows repeat Table 1
            continue
        row = next((r for r in grid.rows if r.label == value.method), None)
        ours: list[tuple[str, float, float | None, int]] = []  # (column, mean, std, n)
        scale = 100.0 if value.metric == "success" else 1.0
        if value.table == 3:
            size = int(value.suite.split("-")[1])
            found = triple.get((value.method, size, value.quality))
            if found:
                ours.append((f"{size} tasks {value.quality}", scale * found[0],
                             None if found[1] is None else scale * found[1], found[2]))
        elif row is not None:
            for column in grid.columns:
                if (column.suite, column.quality) != (value.suite, value.quality):
                    continue
                scores = grid.get(row, column)
                if scores is None:
                    continue
                array = scores.success if value.metric == "success" else scores.returns
                summary = stats.summarize(array)
                ours.append((column.label, scale * summary.mean,
                             None if summary.std is None else scale * summary.std, summary.n))
                used[column] = True
        digits = 1 if value.metric == "return" else 2
        record = {"table": value.table, "paper_row": value.row, "method": value.method,
                  "suite": value.suite, "quality": value.quality, "metric": value.metric,
                  "paper_mean": value.mean, "paper_pm": value.pm, "paper_seeds": value.seeds}
        if not ours:
            body.append([f"Table {value.table}", value.row, value.method,
                         f"{suite_label(value.suite)} {value.quality}", value.metric, MISSING,
                         value.text(), MISSING])
            csv_rows.append({**record, "status": "no run"})
            continue
        for column, mean, std, n in ours:
            text = number(mean, digits) + ("" if std is None else f" ± {number(std, digits)}")
            body.append([f"Table {value.table}", value.row, value.method, column,
                         value.metric, Entry(text, n=n), value.text(),
                         number(mean - value.mean, digits, signed=True)])
            csv_rows.append({**record, "column": column, "status": "compared", "ours_mean": mean,
                             "ours_std": std, "ours_n": n, "diff": mean - value.mean})
    notes = [
        "Ours: mean ± sample std over our seeds (n) at the " + options.label + " "
        "(Table 3: over task draws); paper: as printed (3 seeds); Δ = ours − paper. "
        "Success in %, return undiscounted.",
        "What differs from the paper's protocol: Meta-World 3.x -v3 environments (the paper: "
        "-v2), budgets converted to steps of a batched trainer that trains every task each "
        "step, the gradient-norm clip applied to the mean over tasks, and per column:",
        *[_protocol_note(c, grid) for c in sorted(used, key=column_key)],
    ]
    header = ("Paper table", "Paper row", "Method", "Our column", "Metric", "Ours", "Paper",
              "Δ")
    return [Table("paper", f"Ours beside the SoCo-DT paper's numbers, {options.label}",
                  [("", h) for h in header], body, notes)], csv_rows


def reference_or_none(path: Path | None) -> tuple[list[PaperValue] | None, str]:
    """(values, "") or (None, why not) when the reference file is absent."""
    path = path or REFERENCE_FILE
    if not path.exists():
        return None, (f"the paper's numbers ({path}) are not here: table2 without quoted "
                      "rows, no paper comparison")
    return load_reference(path), ""
