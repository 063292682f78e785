"""`mtrl-bench plot`: figures from the run directories, grouped exactly as the tables are.

Only finished runs count, in the cells of :func:`mtrl_bench.analysis.cells.group_cells` (one
identity per cell; never mixed budgets or method parameters). Per column (suite x dataset
quality x protocol) it writes PNGs into the output folder:

- learning_curves_*: mean over seeds of evaluation success and return against step, one
  line per row; the band is ± one sample std over seeds; periodic evaluations (few goals)
  are dots on the line, the final evaluation (all goals) a star; where fewer seeds than the
  cell has reached a point, "n=k" is written beside it;
- mask_sparsity_*: per row, the share of masked entries (mean over tasks) against step,
  mean ± std over seeds;
- beta_schedule_*: β_t of every row that logs it;
- conflict_scores_*: per row, the conflict-score histogram (all tasks and seeds pooled) at
  a few points of training, in score units on a symmetric log axis, the median over tasks
  of the conflict threshold marked;
- aggregate_metrics_*: rliable's aggregate metrics of the final success, each with a 95%
  bootstrap over whole runs: performance profiles (share of (seed, task) success rates above
  τ, with bands), optimality gap, and P(row > the column's reference) (the reference of
  table1);
- sensitivity_*: where cells of one method and suite differ in exactly one setting (a
  ``sweep --grid``), success against that setting's value, mean and 95% t-interval over
  seeds (the paper's Fig. 5).

An ``index.md`` lists the figures and the runs left out with why; figures the previous plot
into the same folder listed there that these runs no longer give are removed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from mtrl_bench.analysis import stats
from mtrl_bench.analysis.cells import (
    Cell,
    Column,
    column_key,
    evaluations,
    fixed_goal_by_step,
    group_cells,
    row_key,
    suite_label,
)
from mtrl_bench.analysis.grid import Grid, TableOptions, cell_scores, reference_rows
from mtrl_bench.errors import UserError
from mtrl_bench.identity import RUNNER_SET, SECTIONS, flatten, format_value
from mtrl_bench.io import atomic_write, atomic_write_text
from mtrl_bench.runs.rundir import MetricsLog, histogram_edges, scan_runs

Series = list[tuple[Cell, list[list[dict]]]]  # cells of one column with each run's records


def load_columns(runs_dir: Path) -> tuple[dict[Column, Series], list[str]]:
    """Cells of finished runs with their metrics records, by column; and the runs left out."""
    if not runs_dir.is_dir():
        raise UserError(f"no runs to plot: {runs_dir} does not exist (run `mtrl-bench run` "
                        "first, or point --runs at a results/runs folder)")
    cells, left_out = group_cells(scan_runs(runs_dir))
    grouped: dict[Column, Series] = {}
    for cell in cells:
        records = [MetricsLog(run.path / "metrics.jsonl").records() for run in cell.runs]
        for run, recs in zip(cell.runs, records):
            if not recs:
                left_out.append((run, "metrics.jsonl is missing or empty"))
        kept = [r for r in records if r]
        if kept:
            grouped.setdefault(cell.column, []).append((cell, kept))
    if not grouped:
        raise UserError(f"no finished runs with metrics under {runs_dir}: each run directory "
                        "needs meta.json (finished), final.json and metrics.jsonl")
    for series in grouped.values():
        series.sort(key=lambda item: row_key(item[0].row))
    lines = sorted(f"{run.label()} ({run.path}): {why}" for run, why in left_out)
    return dict(sorted(grouped.items(), key=lambda item: column_key(item[0]))), lines


def _new_figure(panels: int, width: float = 4.2, height: float = 3.2):
    from cycler import cycler
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    # ten colours, then the same ten dashed: twelve methods never share a line style
    styles = cycler(linestyle=["-", "--"]) * cycler(color=colormaps["tab10"].colors)
    for ax in axes:
        ax.set_prop_cycle(styles)
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _save(fig, path: Path) -> Path:
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def _mean_std(values: list[list[float]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per point: mean, sample std (NaN with one value) and count."""
    mean = np.array([np.mean(v) for v in values])
    std = np.array([np.std(v, ddof=1) if len(v) > 1 else np.nan for v in values])
    return mean, std, [len(v) for v in values]


def learning_curves(series: Series, title: str):
    """Mean over seeds of eval success (%) and return against step, ± std band."""
    if not any(evaluations(cell, recs)[0] or evaluations(cell, recs)[1]
               for cell, runs in series for recs in runs):
        return None
    fig, axes = _new_figure(2, width=5.8, height=3.8)
    for cell, runs in series:
        per_run = [evaluations(cell, recs) for recs in runs]
        color = None
        for ax, key, scale in ((axes[0], "mean_success", 100.0), (axes[1], "mean_return", 1.0)):
            periodic = [{s: scale * r[key] for s, r in p.items()} for p, _ in per_run]
            final = [{s: scale * r[key] for s, r in f.items()} for _, f in per_run]
            steps = sorted(set().union(*periodic, *final))
            if not steps:
                continue
            values = [[t[s] for t in periodic + final if s in t] for s in steps]
            mean, std, counts = _mean_std(values)
            line, = ax.plot(steps, mean, color=color, linewidth=1.4,
                            label=f"{cell.row.label} (n={len(runs)})")
            color = line.get_color()
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.18,
                            linewidth=0)
            is_final = [any(s in f for f in final) for s in steps]
            for marker, chosen in (("o", False), ("*", True)):
                xs = [s for s, f in zip(steps, is_final) if f == chosen]
                ys = [m for m, f in zip(mean, is_final) if f == chosen]
                ax.plot(xs, ys, linestyle="none", marker=marker, color=color,
                        markersize=10 if chosen else 4)
            for s, m, c in zip(steps, mean, counts):
                if c < len(runs):
                    ax.annotate(f"n={c}", (s, m), textcoords="offset points", xytext=(3, 3),
                                fontsize=6, color=color)
    goals = series[0][0].identity["protocol"]
    axes[0].set(xlabel="step", ylabel="success rate (%)", ylim=(-2, 102),
                title=f"{title}: evaluation success")
    axes[1].set(xlabel="step", ylabel="return", title=f"{title}: evaluation return")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    legend_extra = [
        Line2D([], [], linestyle="none", marker="o", color="gray", markersize=4,
               label=f"periodic ({goals.get('run.eval_goals', '?')} goals/task)"),
        Line2D([], [], linestyle="none", marker="*", color="gray", markersize=10,
               label=f"final ({goals.get('run.final_eval_goals', '?')} goals/task)"),
        Patch(color="gray", alpha=0.18, label="± 1 std over seeds"),
    ]
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, _ = axes[0].get_legend_handles_labels()
    axes[0].legend(handles=handles + legend_extra, fontsize=7)
    return fig


def fixed_goal_curves(series: Series, title: str):
    """Success on one fixed goal set at every evaluation, the end included (like with
    like), mean and 95% t-interval over seeds per row; the all-goal final mean as a star."""
    drawn = [(cell, runs, fixed_goal_by_step(cell, runs)) for cell, runs in series]
    drawn = [(cell, runs, points) for cell, runs, points in drawn if len(points) > 1]
    if not drawn:
        return None
    fig, axes = _new_figure(1, width=6.4, height=4.2)
    ax = axes[0]
    goals = drawn[0][0].identity["protocol"].get("run.eval_goals", "?")
    finals = drawn[0][0].identity["protocol"].get("run.final_eval_goals", "?")
    for cell, runs, points in drawn:
        steps = list(points)
        intervals = [stats.mean_ci(np.array(list(v.values()))[:, None])
                     for v in points.values()]
        mean = np.array([100 * i.estimate for i in intervals])
        line, = ax.plot(steps, mean, marker="o", markersize=3, linewidth=1.4,
                        label=f"{cell.row.label} (n={len(runs)})")
        low = [100 * (i.low if i.low is not None else i.estimate) for i in intervals]
        high = [100 * (i.high if i.high is not None else i.estimate) for i in intervals]
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        _, final = zip(*[evaluations(cell, recs) for recs in runs])
        all_goals = [r["mean_success"] for f in final for r in f.values()]
        if all_goals:
            ax.plot([max(steps)], [100 * np.mean(all_goals)], linestyle="none", marker="*",
                    markersize=10, color=line.get_color())
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="gray", alpha=0.15, label="95% t-interval over seeds"),
                Line2D([], [], linestyle="none", marker="*", color="gray", markersize=10,
                       label=f"final on all {finals} goals/task")]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set(xlabel="step", ylabel="success rate (%)", ylim=(-2, 102),
           title=f"{title}: success on goals 0–{goals - 1 if isinstance(goals, int) else '?'}"
                 " of each task")
    ax.grid(alpha=0.3)
    return fig


def _has_masks(runs: list[list[dict]]) -> bool:
    return any(r.get("kind") == "mask" for records in runs for r in records)


#: the unmasked row the gap figure measures masked rows against
GAP_BASE = "promptdt"


def gap_vs_training(series: Series, title: str):
    """Each masked row minus Prompt-DT on the fixed goal set at every evaluation: the
    difference of seed means with its 95% Welch interval (seeds as the unit)."""
    base = next(((cell, runs) for cell, runs in series if cell.row.label == GAP_BASE), None)
    masked = [(cell, runs) for cell, runs in series if _has_masks(runs)]
    if base is None or not masked:
        return None
    base_curves = fixed_goal_by_step(*base)
    fig, axes = _new_figure(1, width=6.4, height=4.2)
    ax = axes[0]
    for cell, runs in masked:
        points = stats.differences_by_step(fixed_goal_by_step(cell, runs), base_curves,
                                           paired=False)
        if not points:
            continue
        steps, diffs = [p.step for p in points], [p.welch for p in points]
        line, = ax.plot(steps, [100 * d.estimate for d in diffs], marker="o", markersize=3,
                        label=f"{cell.row.label} − {GAP_BASE}")
        defined = [(s, d) for s, d in zip(steps, diffs) if d.low is not None]
        if defined:
            ax.fill_between([s for s, _ in defined], [100 * d.low for _, d in defined],
                            [100 * d.high for _, d in defined], color=line.get_color(),
                            alpha=0.12, linewidth=0)
    goals = base[0].identity["protocol"].get("run.eval_goals", "?")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(xlabel="step", ylabel="difference in success (pp), 95% Welch band",
           title=f"{title}: masked − {GAP_BASE}, {goals} fixed goals/task")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(alpha=0.3)
    return fig


def _mask_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") == "mask" and r.get("sparsity") is not None]


def mask_sparsity(series: Series, title: str):
    """Per row: share of masked entries (mean over tasks) against step, ± std over seeds."""
    rows = [(cell, [_mask_records(recs) for recs in runs]) for cell, runs in series]
    rows = [(cell, [m for m in masks if m]) for cell, masks in rows]
    rows = [(cell, masks) for cell, masks in rows if masks]
    if not rows:
        return None
    fig, axes = _new_figure(1, width=6.0, height=3.8)
    ax = axes[0]
    for cell, masks in rows:
        per_run = [{int(r["step"]): 100 * float(np.mean(r["sparsity"])) for r in m}
                   for m in masks]
        steps = sorted(set().union(*per_run))
        mean, std, _ = _mean_std([[t[s] for t in per_run if s in t] for s in steps])
        line, = ax.plot(steps, mean, marker=".", label=f"{cell.row.label} (n={len(masks)})")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.18,
                        linewidth=0)
    ax.set(xlabel="step", ylabel="masked entries (%), mean over tasks",
           title=f"{title}: mask sparsity (band: ± 1 std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def beta_schedule_figure(series: Series, title: str):
    """β_t against step for every row that records it (HarmoDT has none)."""
    curves = []
    for cell, runs in series:
        points = sorted({(int(r["step"]), float(r["beta"])) for recs in runs
                         for r in _mask_records(recs) if r.get("beta") is not None})
        if points:
            curves.append((cell, points))
    if not curves:
        return None
    fig, axes = _new_figure(1, width=6.0, height=3.8)
    for cell, points in curves:
        steps, betas = zip(*points)
        axes[0].plot(steps, betas, marker=".", label=cell.row.label)
    axes[0].set(xlabel="step", ylabel=r"$\beta_t$", title=rf"{title}: $\beta_t$ schedule")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def pooled_histograms(runs: list[list[dict]], snapshots: int = 4):
    """Up to ``snapshots`` (step, edges, counts summed over seeds, median threshold) of the
    conflict-score histograms, at the steps every seed logged."""
    per_run = [{int(r["step"]): r for r in _mask_records(recs) if r.get("conflict_hist")}
               for recs in runs]
    per_run = [p for p in per_run if p]
    if not per_run:
        return []
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    picks = sorted({common[int(i)] for i in np.linspace(0, len(common) - 1,
                                                        min(snapshots, len(common))).round()})
    out = []
    for step in picks:
        full = None
        for p in per_run:
            hist = p[step]["conflict_hist"]
            edges = histogram_edges(hist["low"], hist["high"], hist["per_decade"])
            counts = np.zeros(len(edges) - 1)
            counts[hist["first"]:hist["first"] + len(hist["counts"])] = hist["counts"]
            full = counts if full is None else full + counts
        thresholds = [t for p in per_run for t in p[step].get("conflict_threshold", [])]
        out.append((step, np.asarray(edges), full,
                    float(np.median(thresholds)) if thresholds else None))
    return out


def _symlog_axis(ax, edges: np.ndarray, used: np.ndarray) -> None:
    """Symmetric log x axis over the used bins; ticks every third decade, a narrow zero bin."""
    magnitude = min(abs(e) for e in edges if e != 0)
    ax.set_xscale("symlog", linthresh=magnitude, linscale=0.2)
    if used.size:
        low, high = edges[used[0]], edges[used[-1] + 1]
        ax.set_xlim(low, high)
        top = math.ceil(math.log10(max(abs(low), abs(high))))
        decades = list(range(top, round(math.log10(magnitude)) + 3, -3))
        ticks = sorted([-10.0 ** d for d in decades] + [0.0] + [10.0 ** d for d in decades])
        ax.set_xticks([t for t in ticks if low <= t <= high],
                      [f"{t:.0e}".replace("-", "−") if t else "0"
                       for t in ticks if low <= t <= high], fontsize=7)


def conflict_scores_figure(series: Series, title: str, snapshots: int = 4):
    """Conflict-score histograms in score units at a few mask updates, one panel per row."""
    rows = [(cell, pooled_histograms(runs, snapshots)) for cell, runs in series]
    rows = [(cell, hists) for cell, hists in rows if hists]
    if not rows:
        return None
    from matplotlib import colormaps

    fig, axes = _new_figure(len(rows), width=5.0, height=3.6)
    for ax, (cell, hists) in zip(axes, rows):
        colors = colormaps["plasma"](np.linspace(0.1, 0.85, len(hists)))
        nonzero = np.zeros(len(hists[0][1]) - 1, dtype=bool)
        for color, (step, edges, counts, threshold) in zip(colors, hists):
            total = counts.sum()
            ax.stairs(counts / total if total else counts, edges, color=color,
                      label=f"step {step}")
            nonzero |= counts > 0
            if threshold is not None:
                ax.axvline(threshold, color=color, linestyle="--", linewidth=1)
        _symlog_axis(ax, hists[0][1], np.flatnonzero(nonzero))
        ax.set_yscale("log")
        ax.set(xlabel="conflict score C = g·ḡ + λF (symlog)",
               ylabel="fraction of entries (log)",
               title=f"{cell.row.label} (n={len(cell.runs)})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, title="dashed: median conflict threshold", title_fontsize=6)
    fig.suptitle(f"{title}: conflict scores, all tasks and seeds pooled")
    return fig


#: thresholds at which the performance profiles are drawn (success rates)
PROFILE_TAUS = np.linspace(0.0, 1.0, 51)


def aggregate_metrics(series: Series, title: str):
    """rliable's aggregate metrics of the column's final success, one panel each: the
    performance profile (share of (seed, task) success rates above τ, bootstrap band), the
    optimality gap and P(row > the column's reference), each with its 95% interval; every
    interval a bootstrap over whole runs (the tables' aggregates and poi)."""

    scores, _ = cell_scores([cell for cell, _ in series], "final")
    if not scores:
        return None
    grid = Grid(scores)
    column = grid.columns[0]
    rows = [r for r in grid.rows if grid.get(r, column)]
    reference = reference_rows(grid, [r for r in rows if r.role != "ablation"],
                               TableOptions()).get(column)
    fig, axes = _new_figure(3, width=5.0, height=max(3.6, 0.28 * len(rows) + 1.2))
    labels = []
    for index, row in enumerate(rows):
        success = grid.get(row, column).success
        n = success.shape[0]
        labels.append(f"{row.label} (n={n})")
        profile = stats.performance_profile_ci(success, PROFILE_TAUS)
        line, = axes[0].plot(100 * PROFILE_TAUS, 100 * profile.fraction, label=labels[-1])
        if profile.low is not None:
            axes[0].fill_between(100 * PROFILE_TAUS, 100 * profile.low, 100 * profile.high,
                                 color=line.get_color(), alpha=0.15, linewidth=0)
        gap = stats.optimality_gap_ci(success)
        _interval_point(axes[1], index, gap, line.get_color())
        if row == reference:
            axes[2].annotate("reference", (0.5, index), ha="center", va="center", fontsize=7)
        elif reference is not None:
            poi = stats.probability_of_improvement_ci(
                success, grid.get(reference, column).success)
            _interval_point(axes[2], index, poi, line.get_color(), scale=1.0)
    axes[0].set(xlabel="success rate threshold τ (%)",
                ylabel="(seed, task) success rates > τ (%)", ylim=(-2, 102),
                title=f"{title}: performance profiles")
    axes[0].legend(fontsize=6)
    axes[1].set(xlabel="optimality gap (pp, lower is better)", title="optimality gap")
    axes[2].set(xlabel=f"P(row > {reference.label})" if reference else "P(row > reference)",
                title="probability of improvement" + ("" if reference else " (no reference)"))
    axes[2].axvline(0.5, color="gray", linestyle="--", linewidth=1)
    for ax in axes[1:]:
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: final success; bands and bars: 95% bootstrap over whole runs")
    return fig


def _interval_point(ax, y: int, interval: stats.Interval, color, scale: float = 100.0):
    """One row's estimate as a dot with its interval as a horizontal bar (none if n/a)."""
    x = scale * interval.estimate
    if interval.low is None:
        ax.plot([x], [y], marker="o", color=color, linestyle="none")
        return
    ax.errorbar([x], [y], xerr=[[x - scale * interval.low], [scale * interval.high - x]],
                marker="o", color=color, capsize=3)


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _derived_keys() -> set[str]:
    """Identity keys the runner derives from others (steps from budgets, goal counts...):
    they change along with a setting and are not settings of their own."""
    return {f"{SECTIONS.get(owner, owner)}.{param}" for owner, params in RUNNER_SET.items()
            for param in params} | {"dataset.tasks"}


def sensitivity(columns: dict[Column, Series]) -> tuple[list[tuple[str, object]], list[str]]:
    """Figures of final success against one setting, for the cells of one method and suite
    that differ in that setting alone (everything else equal, derived values aside): one
    figure per such setting, from the largest group of cells holding the others fixed.
    Returns ([(file stem, figure)], [why a varying setting got no figure])."""
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for series in columns.values():
        for cell, _ in series:
            key = (cell.column.suite, cell.column.quality, cell.row.method)
            groups.setdefault(key, []).append(cell)
    derived = _derived_keys()
    figures, skipped = [], []
    for (suite, quality, method), cells in sorted(groups.items()):
        flats = [{k: format_value(v) for k, v in flatten(c.identity).items()
                  if k not in derived} for c in cells]
        varying = sorted(k for k in set().union(*flats) if len({f.get(k) for f in flats}) > 1)
        for key in varying:
            others = [k for k in varying if k != key]
            partitions: dict[tuple, list[int]] = {}
            for index, flat in enumerate(flats):
                partitions.setdefault(tuple(flat.get(k) for k in others), []).append(index)
            best = max(partitions.values(), key=lambda members: (
                len({flats[i].get(key) for i in members}), len(members)))
            if len({flats[i].get(key) for i in best}) < 2:
                skipped.append(f"no sensitivity figure for {key} ({method}, "
                               f"{suite_label(suite)} {quality}): it never varies alone")
                continue
            chosen = [cells[i] for i in best]
            values = [flatten(c.identity).get(key) for c in chosen]
            figures.append(_sensitivity_figure(method, suite, quality, key, values, chosen))
    return figures, skipped


def _sensitivity_figure(method, suite, quality, key, values, cells):
    numeric = _numeric(values)
    points = sorted(zip(values, (stats.mean_ci(_final_success(c)) for c in cells),
                        (len(c.runs) for c in cells)),
                    key=lambda p: p[0] if numeric else format_value(p[0]))
    fig, axes = _new_figure(1, width=5.5, height=3.8)
    ax = axes[0]
    values = [p[0] for p in points]
    xs = values if numeric else list(range(len(values)))
    means = [100 * p[1].estimate for p in points]
    lows = [100 * (p[1].estimate - p[1].low) if p[1].low is not None else 0 for p in points]
    highs = [100 * (p[1].high - p[1].estimate) if p[1].low is not None else 0 for p in points]
    ax.errorbar(xs, means, yerr=[lows, highs], marker="o", capsize=4,
                label="mean over seeds, 95% t-interval")
    for x, m, p in zip(xs, means, points):
        ax.annotate(f"n={p[2]}", (x, m), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if not numeric:
        ax.set_xticks(xs, [format_value(v) for v in values])
    elif min(values) > 0 and max(values) / min(values) >= 20:
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel="final success rate (%)",
           title=f"{method}, {suite_label(suite)} {quality}\nsensitivity to {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    stem = f"sensitivity_{suite.replace(':', '_')}_{quality}_{method}_{key}"
    return re.sub(r"[^\w.-]", "_", stem), fig


def _final_success(cell: Cell) -> np.ndarray:
    """(seeds, tasks) final success rates of a cell's runs."""
    return np.array([[float(run.results["final"]["success"][t]) for t in run.results["tasks"]]
                     for run in cell.runs])


FIGURES = (
    ("learning_curves", learning_curves, "no eval records"),
    ("mask_sparsity", mask_sparsity, "no mask records"),
    ("beta_schedule", beta_schedule_figure, "no mask records with beta"),
    ("conflict_scores", conflict_scores_figure, "no mask records with conflict_hist"),
    ("aggregate_metrics", aggregate_metrics, "no usable final scores"),
    ("fixed_goal_curves", fixed_goal_curves, "fewer than two evaluations on the fixed goals"),
    ("gap_vs_training", gap_vs_training, f"no {GAP_BASE} or no masked row"),
)


def _stem(column: Column) -> str:
    stem = f"{column.suite.replace(':', '_')}_{column.quality}"
    return stem if not column.note else f"{stem}_{column.protocol}"


_INDEXED = re.compile(r"^- `([^`/]+\.png)`", re.MULTILINE)


def _indexed_figures(out: Path) -> set[str]:
    """The figures an earlier ``plot`` into ``out`` listed in its index.md."""
    try:
        return set(_INDEXED.findall((out / "index.md").read_text()))
    except (OSError, UnicodeDecodeError):
        return set()


def _remove_stale(out: Path, names: set[str]) -> tuple[list[str], list[str]]:
    """Remove the figures ``names`` from ``out``; returns (messages, index lines of those
    that could not be removed, so that the next plot tries again)."""
    messages, kept = [], []
    for name in sorted(names):
        path = out / name
        try:
            path.unlink(missing_ok=True)  # a folder of that name raises: kept and said
        except OSError as err:
            messages.append(f"could not remove {name}, an earlier plot's figure these runs "
                            f"do not give: {err.strerror or err}")
            kept.append(f"- `{name}`: stale (an earlier plot's), could not be removed")
            continue
        messages.append(f"removed {name}: an earlier plot drew it, these runs do not give it")
    return messages, kept


def build_plots(runs_dir: Path, out: Path) -> tuple[list[Path], list[str], list[str]]:
    """Write every figure the records allow; returns (files, messages on figures not drawn
    or removed, runs left out).

    Figures that the previous plot into ``out`` drew (its index.md lists them) and these
    runs no longer give are removed, so that the folder holds the figures of these runs
    only (a column that split into protocols renames its figures); no other file is
    removed."""
    columns, left_out = load_columns(runs_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create figures dir {out}: {err.strerror or err}") from None
    earlier = _indexed_figures(out)
    files, messages, index = [], [], []
    for column, series in columns.items():
        for name, draw, reason in FIGURES:
            fig = draw(series, column.label)
            if fig is None:
                messages.append(f"skipped {name} for {column.label}: {reason}")
                continue
            files.append(_save(fig, out / f"{name}_{_stem(column)}.png"))
            index.append(f"- `{files[-1].name}`: {name.replace('_', ' ')}, {column.label}"
                         + (f" ({column.note})" if column.note else ""))
    figures, not_drawn = sensitivity(columns)
    messages += not_drawn
    for stem, fig in figures:
        files.append(_save(fig, out / f"{stem}.png"))
        index.append(f"- `{files[-1].name}`: sensitivity figure")
    removed, kept = _remove_stale(out, earlier - {f.name for f in files})
    messages += removed
    text = ("# Figures\n\n" + "\n".join(index + kept) + "\n\n## Runs left out\n\n"
            + ("\n".join(f"- {line}" for line in left_out) or "none") + "\n")
    try:
        atomic_write_text(out / "index.md", text)
    except OSError as err:
        raise UserError(f"cannot write {out / 'index.md'}: {err.strerror or err}") from None
    return files, messages, left_out
