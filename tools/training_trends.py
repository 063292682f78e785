"""Were the runs still learning when their budget ended? (results/README, E1)

Per finished run, from its records only: success on the fixed goal set (goals 0..n-1 of
every task, n = ``Run.eval_goals``) at every evaluation, the final one read from
``episodes.json`` so every point is on the same goals; its change over the last evaluation
interval (rising, level or falling, counted exactly: a goal more or less is a change); and
the training loss's trend, the mean of the losses logged in the last evaluation interval
against the mean of those logged in the interval before (both windows lie between
evaluations, so a run needs three of them; with E1's 448k runs the windows are the last two
56k intervals, far past warm-up, at a constant learning rate, so a falling mean is still
fitting; a last interval cut short by a budget that is no multiple of the evaluation period
is shorter). Per cell: how many runs did which, and how many had too few evaluations.

    python tools/training_trends.py [--runs results/runs] [--where run.budget_sequences=448000]

``--where KEY=VALUE`` (repeatable) keeps the cells whose protocol has those values.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtrl_bench.analysis.cells import Cell, fixed_goal_success, group_cells
from mtrl_bench.runs.rundir import MetricsLog, read_json, scan_runs


@dataclass(frozen=True)
class RunTrend:
    seed: int
    curve: dict[int, float]  # step -> success on the fixed goals
    last_change: float  # success over the last evaluation interval (fraction, exact 0 if level)
    loss_before: float | None  # mean logged loss in the interval before the last
    loss_last: float | None  # mean logged loss in the last interval (None: nothing logged)
    final_success: float  # the final evaluation, all goals

    @property
    def success_trend(self) -> str:
        return ("rising" if self.last_change > 0 else "level" if self.last_change == 0
                else "falling")

    @property
    def loss_trend(self) -> str:
        if self.loss_before is None or self.loss_last is None:
            return "unknown"
        return "falling" if self.loss_last < self.loss_before else "not falling"


def run_trend(cell: Cell, run) -> RunTrend | None:
    """The run's trends; None with fewer than two evaluations on the fixed goals."""
    records = MetricsLog(run.path / "metrics.jsonl").records()
    curve = fixed_goal_success(cell, run.path, records)
    steps = sorted(curve)
    if len(steps) < 2:
        return None
    losses = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]

    def mean_loss(low: int, high: int) -> float | None:
        window = [loss for step, loss in losses if low < step <= high]
        return float(np.mean(window)) if window else None

    final = read_json(run.path / "final.json")["final"]["mean_success"]
    change = round(curve[steps[-1]] - curve[steps[-2]], 9) + 0.0  # equal counts: exactly 0
    before = mean_loss(steps[-3], steps[-2]) if len(steps) >= 3 else None
    return RunTrend(run.seed, curve, change, before, mean_loss(steps[-2], steps[-1]),
                    float(final))


def parse_where(items: list[str]) -> dict[str, object]:
    where = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--where takes KEY=VALUE, got {item!r}")
        try:
            where[key] = json.loads(value)
        except json.JSONDecodeError:
            where[key] = value
    return where


def trends(runs_dir: Path, where: dict[str, object]) -> list[tuple[Cell, list[RunTrend]]]:
    """Every cell whose protocol has ``where``'s values, with the trends of its runs that
    have two or more evaluations on the fixed goals."""
    cells, _ = group_cells(scan_runs(runs_dir))
    out = []
    for cell in sorted(cells, key=lambda c: (c.column.label, c.row.label)):
        if cell.has_protocol(where.items()):
            found = [run_trend(cell, run) for run in sorted(cell.runs, key=lambda r: r.seed)]
            out.append((cell, [t for t in found if t is not None]))
    return out


def report(cells: list[tuple[Cell, list[RunTrend]]]) -> list[str]:
    lines = []
    for cell, runs in cells:
        dropped = len(cell.runs) - len(runs)
        lines.append(f"== {cell.column.label} | {cell.row.label} (n={len(runs)}"
                     + (f"; {dropped} with fewer than two fixed-goal evaluations left out"
                        if dropped else "") + ")")
        for t in runs:
            curve = " ".join(f"{100 * v:5.1f}" for _, v in sorted(t.curve.items()))
            loss = ("loss n/a" if t.loss_trend == "unknown" else
                    f"loss {t.loss_before:.4f} -> {t.loss_last:.4f} ({t.loss_trend})")
            lines.append(f"  seed{t.seed}: fixed goals {curve} | last interval "
                         f"{100 * t.last_change:+.1f} pp {t.success_trend} | {loss} | "
                         f"final {100 * t.final_success:.1f}")
        success = Counter(t.success_trend for t in runs)
        losses = Counter(t.loss_trend for t in runs)
        mean_change = 100 * np.mean([t.last_change for t in runs]) if runs else float("nan")
        lines.append(f"  last interval on the fixed goals: {success['rising']} rising, "
                     f"{success['level']} level, {success['falling']} falling "
                     f"(mean {mean_change:+.1f} pp); loss: {losses['falling']} falling, "
                     f"{losses['not falling']} not falling")
    return lines or ["no finished cell matches"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"))
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        print(f"no runs folder {args.runs}", file=sys.stderr)
        return 2
    print("\n".join(report(trends(args.runs, parse_where(args.where)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
