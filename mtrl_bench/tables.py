"""`mtrl-bench table`: the paper's tables rebuilt from run directories alone.

Reads ``<runs>/<suite>/<quality>/<method>/seed<N>/`` (meta.json + final.json; only finished
runs count, the others are listed as not included) and writes Markdown, CSV and LaTeX into
the output folder:

- table1: success (%) per method x suite x dataset quality, mean ± std over seeds, best in
  bold, seed count per cell, each method compared with the best baseline of its column
  (Welch t-test p, Benjamini-Hochberg adjusted, and a stratified-bootstrap CI of the
  difference). The headline uses the final checkpoint; table1_best repeats it for the best
  evaluation (HarmoDT's convention), labelled as such.
- table4: the component ablations (A+M, S+M, S+A, S+A+M): success and return.
- per_task: success per task per method (mean over seeds), one section per suite x quality.
- iqm: interquartile mean over (seed, task) scores with stratified-bootstrap intervals.

Missing runs are shown as "—" (empty in CSV, with status "missing"), never as 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtrl_bench import stats
from mtrl_bench.errors import UserError
from mtrl_bench.io import atomic_write_text, read_json
from mtrl_bench.rundir import add_results_arguments, results_paths, settings_difference

# Display order; methods not listed follow alphabetically.
METHOD_ORDER = (
    "promptdt", "mtdt", "harmodt-r", "harmodt-m", "harmodt-f", "harmodt",
    "socodt-hard", "socodt-fixed", "socodt-nomag", "socodt",
)
QUALITY_ORDER = ("near-optimal", "sub-optimal")
# Paper Table 4: S = soft masks, A = adaptive (IQR) sparsity, M = magnitude-sensitive harmony.
ABLATIONS = (
    ("socodt-hard", "A+M"),
    ("socodt-fixed", "S+M"),
    ("socodt-nomag", "S+A"),
    ("socodt", "S+A+M"),
)
ABLATION_ONLY = frozenset(name for name, _ in ABLATIONS if name != "socodt")
ALPHA = 0.05
SEED_DIR = re.compile(r"seed\d+")
METRIC_LABELS = {
    "final": "final checkpoint",
    "best": "best over evaluations (HarmoDT's max over evaluations; not the headline)",
}


# ---------------------------------------------------------------------------- run directories


@dataclass
class Run:
    """One run directory as found on disk; ``results`` is final.json when finished."""

    path: Path
    method: str
    suite: str
    quality: str
    seed: int | None
    status: str  # finished | running (or another meta.json status) | incomplete | unreadable
    reason: str = ""
    results: dict | None = None
    tasks: list[str] = field(default_factory=list)
    settings: dict | None = None  # meta.json "settings": {"protocol": ..., "method": ...}

    @property
    def protocol(self) -> dict:
        """The shared protocol (budget, model, data, evaluation); {} if not recorded."""
        return (self.settings or {}).get("protocol", {})

    def label(self) -> str:
        seed = "?" if self.seed is None else self.seed
        return f"{self.method} {self.suite} {self.quality} seed{seed}"


def _load_run(path: Path) -> Run:
    suite_dir, quality, method = path.parts[-4:-1]
    seed_text = path.name.removeprefix("seed")
    run = Run(path, method, suite_dir, quality, int(seed_text) if seed_text.isdigit() else None,
              "unreadable")
    try:
        meta = read_json(path / "meta.json")
        run.method = str(meta.get("method", method))
        run.suite = str(meta.get("suite", suite_dir))
        run.quality = str(meta.get("quality", quality))
        run.seed = int(meta.get("seed", run.seed))
        run.tasks = [str(task) for task in meta.get("tasks", [])]
        run.settings = meta.get("settings")
    except (OSError, ValueError, TypeError, AttributeError) as err:
        run.reason = f"meta.json unreadable ({type(err).__name__})"
        return run
    if meta.get("status") != "finished":
        run.status = str(meta.get("status") or "running")
        return run
    if not (path / "final.json").exists():
        run.status, run.reason = "incomplete", "final.json missing"
        return run
    try:
        run.results = read_json(path / "final.json")
    except (OSError, ValueError) as err:
        run.reason = f"final.json unreadable ({type(err).__name__})"
        return run
    run.status = "finished"
    return run


def scan_runs(runs_dir: Path) -> list[Run]:
    """Every run directory under ``runs_dir``, finished or not."""
    return [_load_run(p) for p in sorted(Path(runs_dir).glob("*/*/*/seed*"))
            if p.is_dir() and SEED_DIR.fullmatch(p.name)]  # not seed0.bak, seed0-old, ...


def method_key(name: str):
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def suite_key(name: str):
    from mtrl_bench.suites import FIXED_SUITES

    fixed = list(FIXED_SUITES)
    return (fixed.index(name), "") if name in fixed else (len(fixed), name)


def quality_key(name: str):
    return (QUALITY_ORDER.index(name), "") if name in QUALITY_ORDER else (len(QUALITY_ORDER), name)


def column_key(column: tuple[str, str]):
    return suite_key(column[0]), quality_key(column[1])


@dataclass
class CellData:
    """All finished runs of one suite x quality: per method, arrays of shape (seeds, tasks)."""

    suite: str
    quality: str
    tasks: list[str]
    success: dict[str, np.ndarray] = field(default_factory=dict)
    returns: dict[str, np.ndarray] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)


def _scores(run: Run, metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    results = run.results
    tasks = [str(t) for t in results["tasks"]]
    block = results[metric]
    success = np.array([float(block["success"][t]) for t in tasks])
    returns = np.array([float(block["return"][t]) for t in tasks])
    if not (np.all(np.isfinite(success)) and np.all((success >= 0) & (success <= 1))):
        raise ValueError("success rates outside [0, 1]")
    return tasks, success, returns


def _cell_protocols(runs: list[Run]) -> dict[tuple[str, str], dict]:
    """Per (suite, quality) the protocol most of its runs share (ties: the first in a fixed
    order); runs with another one (a different preset, budget, model...) are left out of
    the cell rather than averaged with it."""
    counts = Counter((r.suite, r.quality, json.dumps(r.protocol, sort_keys=True))
                     for r in runs)
    chosen: dict[tuple[str, str], dict] = {}
    for (suite, quality, protocol), _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        chosen.setdefault((suite, quality), json.loads(protocol))
    return chosen


def collect_cells(runs: list[Run], metric: str) -> tuple[dict[tuple[str, str], CellData], list]:
    """Group finished runs by (suite, quality); runs whose final.json cannot be used are
    returned as (run, reason) instead of being dropped silently."""
    rows: dict[tuple[str, str], dict[str, list]] = {}
    rejected = []
    cells: dict[tuple[str, str], CellData] = {}
    finished = sorted((r for r in runs if r.status == "finished"), key=lambda r: (r.seed or 0))
    protocols = _cell_protocols(finished)
    for run in finished:
        key = (run.suite, run.quality)
        if run.protocol != protocols[key]:
            difference = settings_difference({"": protocols[key]}, {"": run.protocol})
            rejected.append((run, f"made with another protocol than the other runs of its "
                                  f"suite and dataset ({difference})"))
            continue
        try:
            tasks, success, returns = _scores(run, metric)
        except (KeyError, TypeError, ValueError) as err:
            rejected.append((run, f"final.json has no usable {metric!r} scores ({err})"))
            continue
        cell = cells.setdefault(key, CellData(run.suite, run.quality, tasks))
        if sorted(tasks) != sorted(cell.tasks):
            rejected.append((run, "its task list differs from other runs of the same suite"))
            continue
        order = [tasks.index(t) for t in cell.tasks]
        per_method = rows.setdefault(key, {}).setdefault(run.method, [])
        per_method.append((run.seed, success[order], returns[order]))
    for key, methods in rows.items():
        cell = cells[key]
        for method, entries in methods.items():
            cell.seeds[method] = [seed for seed, _, _ in entries]
            cell.success[method] = np.stack([s for _, s, _ in entries])
            cell.returns[method] = np.stack([r for _, _, r in entries])
    return dict(sorted(cells.items(), key=lambda item: column_key(item[0]))), rejected


# ---------------------------------------------------------------------------- rendering


@dataclass
class Cell:
    """One table entry; rendered differently for Markdown and LaTeX."""

    text: str
    bold: bool = False
    mark: str = ""  # "up" / "down": significantly better / worse than the best baseline
    n: int | None = None  # seed count, shown as "(n=3)"

    def markdown(self) -> str:
        text = f"**{self.text}**" if self.bold else self.text
        text += {"up": " ↑", "down": " ↓"}.get(self.mark, "")
        return text + (f" (n={self.n})" if self.n is not None else "")

    def latex(self) -> str:
        text = tex_escape(self.text)
        text = f"\\textbf{{{text}}}" if self.bold else text
        text += {"up": "$^{\\uparrow}$", "down": "$^{\\downarrow}$"}.get(self.mark, "")
        return text + (f" {{\\scriptsize (n={self.n})}}" if self.n is not None else "")


MISSING = Cell("—")
_TEX_REPLACEMENTS = {
    "\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
    "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
    "±": "$\\pm$", "—": "--", "Δ": "$\\Delta$", "≥": "$\\geq$", "↑": "$\\uparrow$",
    "↓": "$\\downarrow$", "–": "--", "−": "$-$", "×": "$\\times$",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_REPLACEMENTS.get(ch, ch) for ch in text)


@dataclass
class Table:
    title: str
    columns: list[tuple[str, str]]  # (group, name); groups become a second header row in LaTeX
    rows: list[list]  # entries are Cell or str
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        from tabulate import tabulate

        headers = [f"{group} {name}".strip() for group, name in self.columns]
        body = [[c.markdown() if isinstance(c, Cell) else c for c in row] for row in self.rows]
        table = tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True)
        notes = "".join(f"\n- {note}" for note in self.notes)
        return f"### {self.title}\n\n{table}\n{notes}\n"

    def latex(self) -> str:
        lines = [
            "\\begin{table}[t]", "\\centering", f"\\caption{{{tex_escape(self.title)}}}",
            f"\\begin{{tabular}}{{l{'c' * (len(self.columns) - 1)}}}", "\\toprule",
        ]
        if any(group for group, _ in self.columns):
            spans: list[list] = []
            for group, _ in self.columns:
                if spans and spans[-1][0] == group:
                    spans[-1][1] += 1
                else:
                    spans.append([group, 1])
            lines.append(" & ".join(
                f"\\multicolumn{{{width}}}{{c}}{{{tex_escape(group)}}}" if width > 1
                else tex_escape(group) for group, width in spans) + " \\\\")
        lines.append(" & ".join(tex_escape(name) for _, name in self.columns) + " \\\\")
        lines.append("\\midrule")
        for row in self.rows:
            lines.append(" & ".join(
                c.latex() if isinstance(c, Cell) else tex_escape(c) for c in row) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        for note in self.notes:
            lines.append(f"\\par\\footnotesize {tex_escape(note)}")
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def suite_label(suite: str) -> str:
    return suite.upper() if suite.startswith("mt") else suite


def mean_std_cell(summary: stats.SeedSummary, scale: float = 100.0, digits: int = 2) -> Cell:
    text = f"{scale * summary.mean:.{digits}f}"
    if summary.std is not None:
        text += f" ± {scale * summary.std:.{digits}f}"
    return Cell(text, n=summary.n)


def _best_flags(values: dict[str, float]) -> set[str]:
    """Names whose value ties the maximum (all bold on ties, as the paper does at 100%)."""
    if not values:
        return set()
    top = max(values.values())
    return {name for name, value in values.items() if math.isclose(value, top, abs_tol=1e-9)}


def _nan(value, scale: float = 1.0) -> float:
    """CSV value: undefined statistics (one seed) become an empty field, not 0."""
    return np.nan if value is None else scale * value


# ---------------------------------------------------------------------------- the tables


@dataclass
class Settings:
    metric: str = "final"
    baselines: tuple[str, ...] | None = None  # None: every method not named socodt*
    n_resamples: int = stats.DEFAULT_RESAMPLES
    seed: int = 0

    def is_baseline(self, method: str) -> bool:
        if self.baselines is None:
            return not method.startswith("socodt")
        return method in self.baselines


def table1(cells: dict[tuple[str, str], CellData], settings: Settings):
    """Paper Table 1 with significance against the best baseline; returns (tables, csv rows)."""
    columns = list(cells)
    methods = sorted({m for c in cells.values() for m in c.success if m not in ABLATION_ONLY},
                     key=method_key)
    baselines = [m for m in methods if settings.is_baseline(m)]
    summaries = {key: {m: stats.summarize(cell.success[m]) for m in cell.success}
                 for key, cell in cells.items()}
    comparisons = []  # (column, best baseline, Comparison)
    for key, cell in cells.items():
        best_base = stats.best_method(cell.success, baselines)
        for method in methods:
            if best_base is None or method == best_base or method not in cell.success:
                continue
            comparisons.append((key, best_base, stats.compare(
                cell.success, method, best_base, n_resamples=settings.n_resamples,
                seed=settings.seed)))
    adjusted = stats.fdr_adjust([c.p_welch for _, _, c in comparisons])
    marks, by_cell = {}, {}
    for (key, best_base, comp), p_adj in zip(comparisons, adjusted):
        by_cell[(key, comp.method)] = (best_base, comp, p_adj)
        if p_adj is not None and p_adj < ALPHA and comp.diff.excludes_zero():
            marks[(key, comp.method)] = "up" if comp.diff.estimate > 0 else "down"

    bold = {key: _best_flags({m: s.mean for m, s in summaries[key].items() if m in methods})
            for key in columns}
    rows, csv_rows = [], []
    for method in methods:
        row = [method]
        for key in columns:
            summary = summaries[key].get(method)
            base = dict(suite=key[0], quality=key[1], method=method, metric=settings.metric,
                        is_baseline=settings.is_baseline(method))
            if summary is None:
                row.append(MISSING)
                csv_rows.append({**base, "status": "missing", "n": 0})
                continue
            cell = mean_std_cell(summary)
            cell.bold = method in bold[key]
            cell.mark = marks.get((key, method), "")
            row.append(cell)
            returns = stats.summarize(cells[key].returns[method])
            record = {**base, "status": "finished", "n": summary.n,
                      "seeds": " ".join(map(str, cells[key].seeds[method])),
                      "mean_success_pct": 100 * summary.mean,
                      "std_success_pct": _nan(summary.std, 100),
                      "mean_return": returns.mean, "std_return": _nan(returns.std),
                      "best_in_column": cell.bold}
            if (key, method) in by_cell:
                best_base, comp, p_adj = by_cell[(key, method)]
                record.update(
                    best_baseline=best_base, n_baseline=comp.n_baseline,
                    diff_pct=100 * comp.diff.estimate,
                    ci_low_pct=_nan(comp.diff.low, 100),
                    ci_high_pct=_nan(comp.diff.high, 100),
                    p_welch=_nan(comp.p_welch), p_welch_bh=_nan(p_adj),
                    p_mann_whitney=_nan(comp.p_mann_whitney),
                    significant=cell.mark or "no")
            csv_rows.append(record)
        rows.append(row)

    label = METRIC_LABELS[settings.metric]
    base_names = ", ".join(baselines) or "none"
    notes = [
        f"Success rate (%) at the {label}: mean ± sample std (ddof=1) over seeds of each "
        "seed's mean over the suite's tasks; n = number of seeds; — = no finished run "
        "(never counted as 0); bold = best in the column.",
        f"↑/↓ = higher/lower than the best baseline of the column (baselines: {base_names}): "
        f"Welch t-test over seeds, Benjamini-Hochberg adjusted over the {len(comparisons)} "
        f"comparisons of this table, p < {ALPHA}, and the 95% stratified-bootstrap interval "
        "of the difference excludes 0. Tests need at least 2 seeds on both sides.",
    ]
    if any(m in ABLATION_ONLY for c in cells.values() for m in c.success):
        notes.append("Ablation variants (socodt-hard, socodt-fixed, socodt-nomag) are in Table 4.")
    main = Table(f"Table 1: success rate (%), {label}",
                 [("", "Method")] + [(suite_label(s), q) for s, q in columns], rows, notes)

    comp_rows = []
    for (key, best_base, comp), p_adj in zip(comparisons, adjusted):
        diff = comp.diff
        interval = (f"[{pct(diff.low)}, {pct(diff.high)}]" if diff.low is not None
                    else "n/a (needs ≥2 seeds each)")
        comp_rows.append([
            suite_label(key[0]), key[1], comp.method, best_base, f"{100 * diff.estimate:+.2f}",
            interval, fmt_p(comp.p_welch), fmt_p(p_adj), fmt_p(comp.p_mann_whitney),
            f"{comp.n_method} vs {comp.n_baseline}",
            {"up": "↑", "down": "↓"}.get(marks.get((key, comp.method)), "no"),
        ])
    comp_table = Table(
        f"Table 1 comparisons: each method vs the best baseline ({label})",
        [("", h) for h in ("Suite", "Dataset", "Method", "Best baseline", "Δ (pp)",
                           "95% CI (stratified bootstrap)", "Welch p", "Welch p (BH)",
                           "Mann-Whitney p", "Seeds", "Differs")],
        comp_rows or [["—"] * 11],
        ["Δ = method − best baseline in percentage points, over seeds and tasks; the interval "
         f"resamples each task's seeds independently ({settings.n_resamples} resamples, "
         f"seed {settings.seed}). Mann-Whitney p is coarse with few seeds: exact, 3 vs 3 "
         "seeds cannot go below 0.1."],
    )
    return [main, comp_table], csv_rows


def table4(cells: dict[tuple[str, str], CellData], settings: Settings):
    """Paper Table 4: ablations, success (%) and return per dataset quality, per suite."""
    suites = sorted({s for s, _ in cells}, key=suite_key)
    qualities = sorted({q for _, q in cells}, key=quality_key)
    columns = [("", "Dataset"), ("", "Method")]
    for suite in suites:
        columns += [(suite_label(suite), "Avg. success (%)"), (suite_label(suite), "Avg. return")]
    rows, csv_rows = [], []
    for quality in qualities:
        cell_stats = {}
        for suite in suites:
            cell = cells.get((suite, quality))
            for method, _ in ABLATIONS:
                if cell is not None and method in cell.success:
                    cell_stats[(suite, method)] = (stats.summarize(cell.success[method]),
                                                   stats.summarize(cell.returns[method]))
        for method, components in ABLATIONS:
            row = [quality, f"{components} ({method})"]
            for suite in suites:
                entry = cell_stats.get((suite, method))
                base = dict(suite=suite, quality=quality, method=method,
                            components=components, metric=settings.metric)
                if entry is None:
                    row += [MISSING, MISSING]
                    csv_rows.append({**base, "status": "missing", "n": 0})
                    continue
                success, returns = entry
                in_suite = [v for (s, _), v in cell_stats.items() if s == suite]
                success_cell = mean_std_cell(success)
                success_cell.bold = success.mean >= max(v[0].mean for v in in_suite) - 1e-9
                return_cell = mean_std_cell(returns, scale=1.0, digits=1)
                return_cell.bold = returns.mean >= max(v[1].mean for v in in_suite) - 1e-9
                return_cell.n = None
                row += [success_cell, return_cell]
                csv_rows.append({
                    **base, "status": "finished", "n": success.n,
                    "mean_success_pct": 100 * success.mean,
                    "std_success_pct": _nan(success.std, 100),
                    "mean_return": returns.mean, "std_return": _nan(returns.std)})
            rows.append(row)
    notes = [
        f"{METRIC_LABELS[settings.metric]}; mean ± sample std over seeds; n = seeds; "
        "— = no finished run. S = soft masks, A = adaptive (IQR) mask sparsity, "
        "M = magnitude-sensitive harmony score; bold = best of the four per suite and dataset.",
    ]
    return [Table(f"Table 4: component ablations, {METRIC_LABELS[settings.metric]}",
                  columns, rows, notes)], csv_rows


def per_task_table(cells: dict[tuple[str, str], CellData], settings: Settings):
    """Success per task per method (mean over seeds), one table per suite x quality."""
    all_methods = sorted({m for c in cells.values() for m in c.success}, key=method_key)
    tables, csv_rows = [], []
    for (suite, quality), cell in cells.items():
        methods = [m for m in all_methods if m in cell.success]
        per_task = {m: cell.success[m].mean(axis=0) for m in methods}
        rows = []
        for index, task in enumerate(cell.tasks):
            values = {m: per_task[m][index] for m in methods}
            best = _best_flags(values)
            rows.append([task] + [Cell(pct(values[m]), bold=m in best) for m in methods])
            for m in methods:
                runs = cell.success[m][:, index]
                csv_rows.append(dict(
                    suite=suite, quality=quality, task=task, method=m, metric=settings.metric,
                    n=runs.size, mean_success_pct=100 * runs.mean(),
                    std_success_pct=100 * runs.std(ddof=1) if runs.size > 1 else np.nan,
                    mean_return=cell.returns[m][:, index].mean()))
        means = {m: stats.summarize(cell.success[m]).mean for m in methods}
        best = _best_flags(means)
        rows.append(["mean"] + [Cell(pct(means[m]), bold=m in best) for m in methods])
        notes = [f"Success rate (%) at the {METRIC_LABELS[settings.metric]}, mean over seeds; "
                 "bold = best in the row."]
        absent = [m for m in all_methods if m not in cell.success]
        if absent:
            notes.append("No finished runs here for: " + ", ".join(absent) + ".")
        tables.append(Table(
            f"Per-task success, {suite_label(suite)} {quality}",
            [("", "Task")] + [("", f"{m} (n={cell.success[m].shape[0]})") for m in methods],
            rows, notes))
    return tables, csv_rows


def iqm_table(cells: dict[tuple[str, str], CellData], settings: Settings):
    """IQM over (seed, task) success scores with stratified-bootstrap 95% intervals."""
    columns = list(cells)
    methods = sorted({m for c in cells.values() for m in c.success}, key=method_key)
    intervals = {key: {m: stats.iqm_ci(cell.success[m], n_resamples=settings.n_resamples,
                                       seed=settings.seed) for m in cell.success}
                 for key, cell in cells.items()}
    rows, csv_rows = [], []
    for method in methods:
        row = [method]
        for key in columns:
            interval = intervals[key].get(method)
            base = dict(suite=key[0], quality=key[1], method=method, metric=settings.metric)
            if interval is None:
                row.append(MISSING)
                csv_rows.append({**base, "status": "missing", "n": 0})
                continue
            n = cells[key].success[method].shape[0]
            text = pct(interval.estimate)
            text += (f" [{pct(interval.low)}, {pct(interval.high)}]" if interval.low is not None
                     else " [n/a]")
            best = _best_flags({m: iv.estimate for m, iv in intervals[key].items()})
            row.append(Cell(text, bold=method in best, n=n))
            csv_rows.append({**base, "status": "finished", "n": n,
                             "iqm_pct": 100 * interval.estimate,
                             "ci_low_pct": _nan(interval.low, 100),
                             "ci_high_pct": _nan(interval.high, 100)})
        rows.append(row)
    notes = [f"Interquartile mean (%) of all (seed, task) success rates at the "
             f"{METRIC_LABELS[settings.metric]}, with a 95% stratified-bootstrap interval "
             f"(tasks as strata, {settings.n_resamples} resamples); intervals need ≥2 seeds; "
             "— = no finished run; bold = best in the column."]
    return [Table(f"IQM success rate (%), {METRIC_LABELS[settings.metric]}",
                  [("", "Method")] + [(suite_label(s), q) for s, q in columns], rows, notes)], \
        csv_rows


# ---------------------------------------------------------------------------- command


def _not_included(runs: list[Run], rejected: list) -> list[str]:
    lines = [f"{run.label()}: {run.status}" + (f" ({run.reason})" if run.reason else "")
             for run in runs if run.status != "finished"]
    lines += [f"{run.label()}: not used ({reason})" for run, reason in rejected]
    return sorted(lines)


def _csv_text(rows: list[dict]) -> str:
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False, float_format="%.10g")
    return buffer.getvalue()


def _write(out: Path, name: str, tables: list[Table], csv_rows: list[dict],
           extra_markdown: str = "") -> tuple[str, list[Path]]:
    markdown = "\n".join(t.markdown() for t in tables) + extra_markdown
    latex = "\n".join(t.latex() for t in tables)
    files = []
    for suffix, text in (("md", markdown), ("csv", _csv_text(csv_rows)), ("tex", latex)):
        path = out / f"{name}.{suffix}"
        try:
            atomic_write_text(path, text)
        except OSError as err:
            raise UserError(f"cannot write {path}: {err.strerror or err}") from None
        files.append(path)
    return markdown, files


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create results dir {out}: {err.strerror or err}") from None
    if not out.is_dir():
        raise UserError(f"results dir {out} is not a directory")


def finished_runs_or_error(runs_dir: Path) -> list[Run]:
    if not runs_dir.is_dir():
        raise UserError(f"no finished runs: {runs_dir} does not exist (run `mtrl-bench run` "
                        "first, or point --runs at a results/runs folder)")
    runs = scan_runs(runs_dir)
    if not any(run.status == "finished" for run in runs):
        found = f" ({len(runs)} unfinished)" if runs else ""
        raise UserError(f"no finished runs under {runs_dir}{found}: a run counts when "
                        "meta.json says finished and final.json exists")
    return runs


def _cells_and_skipped(runs: list[Run], metric: str):
    """Cells of the usable runs, and the Markdown list of runs left out (with why)."""
    cells, rejected = collect_cells(runs, metric)
    skipped = _not_included(runs, rejected)
    extra = "\nRuns not included:\n" + "".join(f"- {line}\n" for line in skipped) if skipped else ""
    return cells, extra


def build_tables(runs_dir: Path, out: Path, settings: Settings) -> tuple[str, list[Path]]:
    """Write every table for ``settings.metric``; returns (all Markdown, files written).

    With the headline metric (final) Table 1 is also written for the best evaluation, as
    table1_best, so both numbers exist and are never confused.
    """
    runs = finished_runs_or_error(runs_dir)
    if settings.baselines is not None:
        known = {run.method for run in runs if run.status == "finished"}
        unknown = [b for b in settings.baselines if b not in known]
        if unknown:
            raise UserError(f"unknown baseline(s) {', '.join(unknown)}; methods with finished "
                            f"runs: {', '.join(sorted(known, key=method_key))}")
    _prepare_out(out)
    cells, extra = _cells_and_skipped(runs, settings.metric)
    if not cells:
        raise UserError(f"no usable finished runs under {runs_dir}: "
                        f"final.json has no usable {settings.metric!r} scores")
    suffix = "" if settings.metric == "final" else f"_{settings.metric}"
    outputs, files = [], []
    for name, build in (("table1", table1), ("table4", table4), ("per_task", per_task_table),
                        ("iqm", iqm_table)):
        tables, rows = build(cells, settings)
        markdown, written = _write(out, name + suffix, tables, rows,
                                   extra if name == "table1" else "")
        outputs.append(markdown)
        files += written
    if settings.metric == "final":
        best = dataclasses.replace(settings, metric="best")
        best_cells, best_extra = _cells_and_skipped(runs, "best")
        if best_cells:
            tables, rows = table1(best_cells, best)
            markdown, written = _write(out, "table1_best", tables, rows, best_extra)
            outputs.append(markdown)
            files += written
        else:
            outputs.append("(table1_best not written: no final.json has a 'best' block)\n")
    return "\n".join(outputs), files


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_results_arguments(parser, "tables")
    parser.add_argument("--metric", choices=("final", "best"), default="final",
                        help="final checkpoint (headline; table1_best is written alongside) "
                             "or best over evaluations for every table")
    parser.add_argument("--baselines", nargs="+", default=None, metavar="METHOD",
                        help="methods that count as baselines (default: all but socodt*)")
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES,
                        help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")


def run_command(args: argparse.Namespace) -> int:
    if args.resamples < 100:
        raise UserError(f"--resamples must be at least 100, got {args.resamples}")
    runs_dir, out = results_paths(args, "tables")
    settings = Settings(args.metric, tuple(args.baselines) if args.baselines else None,
                        args.resamples, args.seed)
    markdown, files = build_tables(runs_dir, out, settings)
    print(markdown)
    print(f"wrote {len(files)} files to {out}")
    return 0
