"""Finished runs read back from their run directories and grouped into cells: the one
grouping every table and figure uses.

A column is a suite, dataset quality and protocol; a row a method with its own settings; a
cell the runs (seeds) of one identity (:mod:`mtrl_bench.identity`). Runs whose identity
differs in anything but the seed are never pooled: they become rows of their own, labelled
by what differs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtrl_bench.identity import cell_id, differences, format_value, protocol_id, variant_id
from mtrl_bench.io import read_json
from mtrl_bench.runs.rundir import RunRecord, numerics_summary
from mtrl_bench.suites import FIXED_SUITES

# ------------------------------------------------------------------ cells


@dataclass(frozen=True)
class Column:
    """Runs of one suite, dataset quality and protocol (everything but the method)."""

    suite: str
    quality: str
    protocol: str  # protocol_id of the identity
    label: str
    note: str = ""  # how this protocol differs from the suite's main one, if there are several


@dataclass(frozen=True)
class Row:
    """One method with one set of its own parameters (a variant)."""

    method: str
    variant: str  # variant_id of the identity
    label: str
    role: str = "proposed"
    ablation_of: str | None = None
    components: str | None = None
    order: int | None = None  # within its role (registration's ``order``; None: after those)


@dataclass
class Cell:
    """Replicates of one identity: every finished run (seed) of a row x column."""

    column: Column
    row: Row
    identity: dict
    runs: list[RunRecord]

    @property
    def id(self) -> str:
        return cell_id(self.identity)

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    def has_protocol(self, values: Iterable[tuple[str, object]]) -> bool:
        """Whether the cell's protocol has these (key, value) entries (e.g. a budget)."""
        protocol = self.identity["protocol"]
        return all(protocol.get(key) == value for key, value in values)


def _majority(groups: dict[str, list], key) -> str:
    """The group with the most runs (ties: the smallest ``key``)."""
    return min(groups, key=lambda g: (-len(groups[g]), key(g)))


def _difference_label(base: dict, other: dict, limit: int = 2) -> tuple[str, bool]:
    """('k=v, k2=v2', cut) of the keys where ``other`` differs from ``base`` (first
    ``limit``; ``cut`` when there were more)."""
    keys = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
    shown = [f"{k}={format_value(other[k]) if k in other else 'unset'}" for k in keys[:limit]]
    return ", ".join(shown), len(keys) > limit


def _recorded_default(groups: dict[str, list[RunRecord]]) -> dict | None:
    """The default variant of a method as its newest run that records one says (meta.json
    "default_method_identity": what a plain ``run --method M`` made when that run was made);
    None when no run records it."""
    runs = [run for members in groups.values() for run in members if run.default_identity]
    return max(runs, key=lambda run: run.started).default_identity if runs else None


def _row_labels(method: str, groups: dict[str, list[RunRecord]]) -> dict[str, str]:
    """Label per variant id. The variant a plain ``run --method M`` made (as the runs record
    it, :func:`_recorded_default`) is labelled ``M``; every other one ``M [what differs]``,
    with its id where the difference is cut short. Where no run records the default, the
    variant with the most runs stands in for it."""
    identities = {g: members[0].identity["method"] for g, members in groups.items()}
    default = _recorded_default(groups)
    if default is None:
        default = identities[_majority(groups, key=lambda g: g)]
    labels = {}
    for group, ident in identities.items():
        if ident == default:
            labels[group] = method
            continue
        text, cut = _difference_label(default, ident)
        labels[group] = f"{method} [{text}{', … #' + group[:6] if cut else ''}]"
    counts = Counter(labels.values())
    return {g: label if counts[label] == 1 else f"{label} #{g[:6]}" for g, label in labels.items()}


def _role(run: RunRecord) -> dict:
    """The role the run records (meta.json "role"); a run without one is "proposed"."""
    return {"role": "proposed", "ablation_of": None, "components": None, "order": None,
            **(run.role or {})}


def run_scores(run: RunRecord, metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(tasks, success rates, returns) of a finished run for ``metric`` (final or best) from
    its final.json; ValueError, KeyError or TypeError when they are unusable."""
    results = run.results
    tasks = [str(t) for t in results["tasks"]]
    block = results[metric]
    success = np.array([float(block["success"][t]) for t in tasks])
    returns = np.array([float(block["return"][t]) for t in tasks])
    if not (np.all(np.isfinite(success)) and np.all((success >= 0) & (success <= 1))):
        raise ValueError("success rates outside [0, 1]")
    if not np.all(np.isfinite(returns)):
        raise ValueError("non-finite returns")
    return tasks, success, returns


def unusable_reason(run: RunRecord, metric: str) -> str | None:
    """Why ``run``'s ``metric`` scores cannot be used; None when they can."""
    try:
        run_scores(run, metric)
    except (KeyError, TypeError, ValueError) as err:
        return f"final.json has no usable {metric!r} scores ({err})"
    return None


def group_cells(runs: list[RunRecord], metric: str = "final",
                ) -> tuple[list[Cell], list[tuple[RunRecord, str]]]:
    """Finished runs with usable ``metric`` scores grouped by identity into cells, and the
    runs left out with why.

    This is the one selection of runs: every table, the tidy CSV and every figure use it, so
    a run left out of one (unfinished, no identity, scores that cannot be used such as a
    success rate of 1.2, other tasks than its cell's) is left out of all and listed by each.
    A cell never averages runs that differ in any resolved setting. Columns (suite x quality
    x protocol) and rows (method x its own parameters) get labels that name what sets them
    apart: of several protocols of one suite, the one with the most runs is [1]; a row is
    the method's name only for the variant its defaults make (see :func:`_row_labels`).
    """
    left_out = []
    usable: list[RunRecord] = []
    for run in runs:
        if run.status != "finished":
            left_out.append((run, run.status + (f" ({run.reason})" if run.reason else "")))
        elif not run.identity:
            left_out.append((run, "meta.json records no run identity (made by an older "
                                  "mtrl-bench); rerun it"))
        elif (reason := unusable_reason(run, metric)) is not None:
            left_out.append((run, reason))
        else:
            usable.append(run)
    by_cell: dict[str, list[RunRecord]] = {}
    for run in usable:
        by_cell.setdefault(cell_id(run.identity), []).append(run)

    protocols: dict[tuple[str, str], dict[str, list[RunRecord]]] = {}
    variants: dict[str, dict[str, list[RunRecord]]] = {}
    for run in usable:
        source = run.identity["protocol"].get("dataset.source", "generated")
        protocols.setdefault((run.suite, run.quality, source), {}).setdefault(
            protocol_id(run.identity), []).append(run)
        variants.setdefault(run.method, {}).setdefault(variant_id(run.identity), []).append(run)

    columns: dict[str, Column] = {}
    for (suite, quality, source), groups in protocols.items():
        main = _majority(groups, key=lambda g: g)
        base = groups[main][0].identity["protocol"]
        ordered = [main] + sorted(g for g in groups if g != main)
        for index, group in enumerate(ordered):
            label = f"{suite_label(suite)} {quality}" + (
                "" if source == "generated" else f" ({source} data)")
            note = ""
            if len(ordered) > 1:
                label += f" [{index + 1}]"
                other = groups[group][0].identity["protocol"]
                note = ("main protocol (most runs)" if group == main else "differs from [1] in "
                        + "; ".join(differences(base, other)))
            columns[group] = Column(suite, quality, group, label, note)
    rows: dict[tuple[str, str], Row] = {}
    for method, groups in variants.items():
        role = _role(next(iter(groups.values()))[0])
        for group, label in _row_labels(method, groups).items():
            rows[(method, group)] = Row(method, group, label, role["role"],
                                        role["ablation_of"], role["components"], role["order"])

    cells = []
    for members in by_cell.values():
        members.sort(key=lambda r: r.seed or 0)
        tasks = sorted(members[0].results["tasks"])
        for run in [r for r in members if sorted(r.results["tasks"]) != tasks]:
            left_out.append((run, "final.json lists other tasks than its cell's runs"))
            members.remove(run)
        first = members[0]
        cells.append(Cell(columns[protocol_id(first.identity)],
                          rows[(first.method, variant_id(first.identity))],
                          first.identity, members))
    cells.sort(key=lambda c: (column_key(c.column), row_key(c.row)))
    return cells, left_out


def numerics_notes(cells: list[Cell]) -> list[str]:
    """Which machine numerics made the runs (meta.json "numerics"), and every cell whose
    runs were made under more than one: their seeds differ by floating-point chaos as well
    as by seed (README, Reproducibility)."""
    described = {}
    for cell in cells:
        for run in cell.runs:
            for key in run.numerics_keys:
                described.setdefault(key, numerics_summary(run.numerics)
                                     if key != "unrecorded" else "unrecorded")
    if not described:
        return []
    if set(described) == {"unrecorded"}:
        return ["Machine numerics: unrecorded for every run (made before mtrl-bench recorded "
                "them); runs made on another CPU can differ by floating-point chaos."]
    notes = ["Machine numerics (meta.json): " + "; ".join(
        described[key] if key != "unrecorded" else "unrecorded (older runs)"
        for key in sorted(described)) + "."]
    mixed = []
    for cell in cells:
        counts = Counter(key for run in cell.runs for key in run.numerics_keys)
        if len(counts) > 1:
            parts = ", ".join(f"{key} x{n}" for key, n in sorted(counts.items()))
            mixed.append(f"{cell.row.label} in {cell.column.label} ({parts})")
    if mixed:
        notes.append("Cells mixing runs made under different numerics: " + "; ".join(mixed)
                     + ".")
    return notes


# ------------------------------------------------------------------ display order and names

QUALITY_ORDER = ("near-optimal", "sub-optimal")
ROLE_ORDER = ("baseline", "proposed", "ablation")


def suite_label(suite: str) -> str:
    return suite.upper() if suite.startswith("mt") else suite


def suite_key(name: str):
    fixed = list(FIXED_SUITES)
    return (fixed.index(name), "") if name in fixed else (len(fixed), name)


def quality_key(name: str):
    return (QUALITY_ORDER.index(name), "") if name in QUALITY_ORDER else (len(QUALITY_ORDER), name)


def column_key(column: Column):
    return suite_key(column.suite), quality_key(column.quality), column.label


def row_key(row: Row):
    """Role (baselines, proposed, ablations), then the order the method was registered
    with (as its runs record it), methods without one after those by name, then the
    method's default variant before the others."""
    role = ROLE_ORDER.index(row.role) if row.role in ROLE_ORDER else len(ROLE_ORDER)
    order = (0, row.order, row.method) if row.order is not None else (1, 0, row.method)
    return role, order, "[" in row.label, row.label


def evaluations(cell: Cell, records: list[dict]) -> tuple[dict, dict]:
    """({step: record} of periodic evaluations, {step: record} of the final one)."""
    total = cell.identity["protocol"].get("trainer.total_steps")
    periodic, final = {}, {}
    for r in records:
        if r.get("kind") == "eval" and r.get("mean_success") is not None:
            (final if int(r["step"]) == total else periodic)[int(r["step"])] = r
    return periodic, final


def fixed_goal_success(cell: Cell, run_path: Path, records: list[dict]) -> dict[int, float]:
    """{step: mean success on the periodic evaluations' goal set}: goals 0..n-1 of every
    task (n = Run.eval_goals) at each periodic evaluation and, read from episodes.json, at
    the final one, so every point of a curve is measured on the same goals."""
    goals = cell.identity["protocol"].get("run.eval_goals")
    periodic, final = evaluations(cell, records)
    points = {step: r["mean_success"] for step, r in periodic.items()
              if r.get("num_goals") in (None, goals)}
    episodes_path = Path(run_path) / "episodes.json"
    if final and goals and episodes_path.exists():
        episodes = [e for e in read_json(episodes_path) if e["goal"] < goals]
        if episodes:
            points[max(final)] = float(np.mean([bool(e["success"]) for e in episodes]))
    return points


def fixed_goal_by_step(cell: Cell, runs: list[list[dict]],
                      seeds: list[int] | None = None) -> dict[int, dict[int, float]]:
    """{step: {seed: fixed-goal success}} over the runs of a cell (``runs``: each run's
    metrics records, in ``cell.runs`` order), only ``seeds`` if given."""
    by_step: dict[int, dict[int, float]] = {}
    for run, records in zip(cell.runs, runs):
        if seeds is None or run.seed in seeds:
            for step, value in fixed_goal_success(cell, run.path, records).items():
                by_step.setdefault(step, {})[run.seed] = value
    return dict(sorted(by_step.items()))
