"""`mtrl-bench plot`: figures from the metrics.jsonl of every run directory.

Per suite x dataset quality it writes PNGs into the output folder:
- learning_curves_*: mean evaluation success and return against step, one line per method,
  a band of ± one std over seeds (where two or more seeds reached that step);
- mask_sparsity_*: per-task mask sparsity over training, one panel per run ("mask" records);
- beta_schedule_*: the β_t threshold schedule ("mask" records' beta);
- conflict_scores_*: conflict-score histograms at a few points of training ("conflict_hist").
Unfinished runs are drawn too (that is how one watches a run); a figure whose records no run
has is skipped with a message.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from mtrl_bench.errors import UserError
from mtrl_bench.io import atomic_write
from mtrl_bench.rundir import MetricsLog, add_results_arguments, results_paths
from mtrl_bench.tables import Run, column_key, method_key, scan_runs, suite_label

Series = list[tuple[Run, list[dict]]]  # runs of one suite x quality with their records


def load_series(runs_dir: Path) -> dict[tuple[str, str], Series]:
    """Runs (any status but unreadable) with a non-empty metrics.jsonl, by (suite, quality)."""
    if not runs_dir.is_dir():
        raise UserError(f"no runs to plot: {runs_dir} does not exist (run `mtrl-bench run` "
                        "first, or point --runs at a results/runs folder)")
    grouped: dict[tuple[str, str], Series] = {}
    for run in scan_runs(runs_dir):
        if run.status == "unreadable":
            continue
        records = MetricsLog(run.path / "metrics.jsonl").records()
        if records:
            grouped.setdefault((run.suite, run.quality), []).append((run, records))
    if not grouped:
        raise UserError(f"no runs with metrics under {runs_dir}: each run directory needs a "
                        "metrics.jsonl")
    for series in grouped.values():
        series.sort(key=lambda item: (method_key(item[0].method), item[0].seed or 0))
    return dict(sorted(grouped.items(), key=lambda item: column_key(item[0])))


def _label(run: Run) -> str:
    text = f"{run.method} seed{run.seed}"
    return text if run.status == "finished" else f"{text} ({run.status})"


def _new_figure(panels: int, width: float = 4.2, height: float = 3.2):
    from matplotlib.figure import Figure

    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _save(fig, path: Path) -> Path:
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def _eval_table(records: list[dict], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in records
            if r.get("kind") == "eval" and r.get(key) is not None}


def learning_curves(series: Series, title: str):
    """Mean over seeds of eval success (%) and return against step, ± std band."""
    by_method: dict[str, list[list[dict]]] = {}
    for run, records in series:
        by_method.setdefault(run.method, []).append(records)
    if not any(_eval_table(r, "mean_success") for runs in by_method.values() for r in runs):
        return None
    fig, axes = _new_figure(2, width=5.5, height=3.6)
    for method, runs in by_method.items():
        for ax, key, scale in ((axes[0], "mean_success", 100.0), (axes[1], "mean_return", 1.0)):
            tables = [_eval_table(records, key) for records in runs]
            steps = sorted(set().union(*tables))
            if not steps:
                continue
            values = [[scale * t[s] for t in tables if s in t] for s in steps]
            mean = np.array([np.mean(v) for v in values])
            std = np.array([np.std(v, ddof=1) if len(v) > 1 else np.nan for v in values])
            line, = ax.plot(steps, mean, marker="o", markersize=3,
                            label=f"{method} (n={len(runs)})")
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axes[0].set(xlabel="step", ylabel="success rate (%)", ylim=(-2, 102),
                title=f"{title}: evaluation success")
    axes[1].set(xlabel="step", ylabel="return", title=f"{title}: evaluation return")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def _mask_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") == "mask" and r.get("sparsity") is not None]


def mask_sparsity(series: Series, title: str):
    """Per-task fraction of masked parameters against step, one panel per run."""
    runs = [(run, _mask_records(records)) for run, records in series]
    runs = [(run, masks) for run, masks in runs if masks]
    if not runs:
        return None
    fig, axes = _new_figure(len(runs))
    for ax, (run, masks) in zip(axes, runs):
        steps = [int(r["step"]) for r in masks]
        sparsity = 100 * np.array([r["sparsity"] for r in masks], dtype=float)  # (records, tasks)
        names = run.tasks if len(run.tasks) == sparsity.shape[1] else [
            f"task {i}" for i in range(sparsity.shape[1])]
        colors = _task_colors(sparsity.shape[1])
        for index, name in enumerate(names):
            ax.plot(steps, sparsity[:, index], color=colors[index], linewidth=0.9, alpha=0.8,
                    label=name)
        ax.plot(steps, sparsity.mean(axis=1), color="black", linewidth=2.2, label="mean")
        ax.set(xlabel="step", ylabel="masked parameters (%)", title=_label(run))
        ax.grid(alpha=0.3)
        if sparsity.shape[1] <= 10:
            ax.legend(fontsize=6)
    fig.suptitle(f"{title}: per-task mask sparsity")
    return fig


def _task_colors(count: int):
    from matplotlib import colormaps

    if count <= 10:
        return colormaps["tab10"](range(count))
    return colormaps["viridis"](np.linspace(0, 1, count))


def beta_schedule(series: Series, title: str):
    """β_t against step for every run that records it (HarmoDT has none)."""
    curves = []
    for run, records in series:
        points = [(int(r["step"]), float(r["beta"])) for r in _mask_records(records)
                  if r.get("beta") is not None]
        if points:
            curves.append((run, points))
    if not curves:
        return None
    fig, axes = _new_figure(1, width=6.0, height=3.8)
    for run, points in curves:
        steps, betas = zip(*points)
        axes[0].plot(steps, betas, marker=".", label=_label(run))
    axes[0].set(xlabel="step", ylabel=r"$\beta_t$", title=rf"{title}: $\beta_t$ schedule")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def conflict_scores(series: Series, title: str, snapshots: int = 4):
    """Histograms of conflict scores at up to ``snapshots`` mask updates, one panel per run."""
    runs = []
    for run, records in series:
        hists = [r for r in _mask_records(records) if r.get("conflict_hist")]
        if hists:
            picks = sorted(set(np.linspace(0, len(hists) - 1, min(snapshots, len(hists)))
                               .round().astype(int)))
            runs.append((run, [hists[i] for i in picks]))
    if not runs:
        return None
    from matplotlib import colormaps

    fig, axes = _new_figure(len(runs))
    for ax, (run, hists) in zip(axes, runs):
        colors = colormaps["plasma"](np.linspace(0.1, 0.85, len(hists)))
        for color, record in zip(colors, hists):
            edges = np.asarray(record["conflict_hist"]["edges"], dtype=float)
            counts = np.asarray(record["conflict_hist"]["counts"], dtype=float)
            if counts.ndim > 1:  # per task: pool the tasks
                counts = counts.sum(axis=0)
            total = counts.sum()
            ax.stairs(counts / total if total else counts, edges, color=color,
                      label=f"step {record['step']}")
        ax.set(xlabel="conflict score", ylabel="fraction of parameters", title=_label(run))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: conflict-score distribution")
    return fig


FIGURES = (
    ("learning_curves", learning_curves, "no eval records"),
    ("mask_sparsity", mask_sparsity, "no mask records"),
    ("beta_schedule", beta_schedule, "no mask records with beta"),
    ("conflict_scores", conflict_scores, "no mask records with conflict_hist"),
)


def build_plots(runs_dir: Path, out: Path) -> tuple[list[Path], list[str]]:
    """Write every figure that the records allow; returns (files, skip messages)."""
    grouped = load_series(runs_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create figures dir {out}: {err.strerror or err}") from None
    files, skipped = [], []
    for (suite, quality), series in grouped.items():
        title = f"{suite_label(suite)} {quality}"
        stem = f"{suite.replace(':', '_')}_{quality}"
        for name, draw, reason in FIGURES:
            fig = draw(series, title)
            if fig is None:
                skipped.append(f"skipped {name} for {title}: {reason}")
                continue
            files.append(_save(fig, out / f"{name}_{stem}.png"))
    return files, skipped


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_results_arguments(parser, "figures")


def run_command(args: argparse.Namespace) -> int:
    files, skipped = build_plots(*results_paths(args, "figures"))
    for message in skipped:
        print(message)
    for path in files:
        print(f"wrote {path}")
    return 0
