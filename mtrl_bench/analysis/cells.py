"""Finished runs read back from their run directories and grouped into cells: the one
grouping every table and figure uses.

A column is a suite, dataset quality and protocol; a row a method with its own settings; a
cell the runs (seeds) of one identity (:mod:`mtrl_bench.identity`). Runs whose identity
differs in anything but the seed are never pooled: they become rows of their own, labelled
by what differs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtrl_bench.identity import cell_id, differences, format_value, protocol_id, variant_id
from mtrl_bench.io import read_json
from mtrl_bench.provenance import numerics_summary
from mtrl_bench.runs.rundir import SEED_DIR, lock_holder


@dataclass
class RunRecord:
    """One run directory as found on disk; ``results`` is final.json when finished."""

    path: Path
    method: str
    suite: str
    quality: str
    seed: int | None
    #: finished | running | stopped (said running, nobody holds the lock) | another meta.json
    #: status | incomplete | unreadable
    status: str
    reason: str = ""
    results: dict | None = None
    tasks: list[str] = field(default_factory=list)
    identity: dict | None = None
    role: dict | None = None  # meta.json "role", used when the method is not registered here
    #: meta.json "numerics" (machine, threads, library builds; None: made before it was
    #: recorded) and the keys of every numerics it ran under (more than one if resumed
    #: elsewhere)
    numerics: dict | None = None
    numerics_keys: tuple[str, ...] = ("unrecorded",)
    #: meta.json "streams": digests of what the seed fixed (initial weights, batch stream,
    #: initial masks); None for runs made before they were recorded
    streams: dict | None = None

    def label(self) -> str:
        seed = "?" if self.seed is None else self.seed
        return f"{self.method} {self.suite} {self.quality} seed{seed}"


def load_run(path: Path) -> RunRecord:
    suite_dir, quality, method = path.parts[-5:-2]
    seed_text = path.name.removeprefix("seed")
    run = RunRecord(path, method, suite_dir, quality,
                    int(seed_text) if seed_text.isdigit() else None, "unreadable")
    try:
        meta = read_json(path / "meta.json")
        run.method = str(meta.get("method", method))
        run.suite = str(meta.get("suite", suite_dir))
        run.quality = str(meta.get("quality", quality))
        run.seed = int(meta.get("seed", run.seed))
        run.tasks = [str(task) for task in meta.get("tasks", [])]
        run.identity = meta.get("identity")
        run.role = meta.get("role")
        run.numerics = meta.get("numerics")
        run.streams = meta.get("streams")
        if run.numerics:
            run.numerics_keys = tuple(meta.get("numerics_mixed") or [run.numerics["key"]])
    except (OSError, ValueError, TypeError, AttributeError) as err:
        run.reason = f"meta.json unreadable ({type(err).__name__})"
        return run
    if meta.get("status") != "finished":
        run.status = str(meta.get("status") or "running")
        if run.status == "running" and lock_holder(path) is None:
            run.status = "stopped"
            run.reason = ("meta.json says running but no process holds its lock: killed or "
                          "crashed; the same command resumes it")
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


def scan_runs(runs_dir: Path) -> list[RunRecord]:
    """Every run directory under ``runs_dir`` (suite/quality/method/cell/seedN), any status,
    and those of the layout before run identities (suite/quality/method/seedN), which
    can only be listed as left out."""
    def seed_dirs(pattern: str) -> list[Path]:
        return [p for p in sorted(Path(runs_dir).glob(pattern))
                if p.is_dir() and SEED_DIR.fullmatch(p.name)]  # not seed0.bak, seed0-old, ...

    legacy = [RunRecord(p, p.parts[-2], p.parts[-4], p.parts[-3], int(p.name[4:]), "legacy",
                        "a run directory of the layout before run identities; rerun it")
              for p in seed_dirs("*/*/*/seed*")]
    return [load_run(p) for p in seed_dirs("*/*/*/*/seed*")] + legacy


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


def _majority(groups: dict[str, list], key) -> str:
    """The group with the most runs (ties: the smallest ``key``)."""
    return min(groups, key=lambda g: (-len(groups[g]), key(g)))


def _difference_label(base: dict, other: dict, limit: int = 2) -> tuple[str, bool]:
    """('k=v, k2=v2', cut) of the keys where ``other`` differs from ``base`` (first
    ``limit``; ``cut`` when there were more)."""
    keys = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
    shown = [f"{k}={format_value(other[k]) if k in other else 'unset'}" for k in keys[:limit]]
    return ", ".join(shown), len(keys) > limit


def _row_labels(method: str, groups: dict[str, list[RunRecord]]) -> dict[str, str]:
    """Label per variant id. The variant a plain ``run --method M`` makes today (its gin
    file and code defaults) is labelled ``M``; every other one ``M [what differs]``, with
    its id where the difference is cut short. For a method not registered here, the
    variant with the most runs stands in for the default."""
    from mtrl_bench.config import default_method_identity

    identities = {g: members[0].identity["method"] for g, members in groups.items()}
    default = default_method_identity(method)
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
    from mtrl_bench.method import method_role

    registered = method_role(run.method)
    if registered is not None:
        return registered.as_dict()
    return {"role": "proposed", "ablation_of": None, "components": None, **(run.role or {})}


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
                                        role.get("ablation_of"), role.get("components"))

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
    from mtrl_bench.suites import FIXED_SUITES

    fixed = list(FIXED_SUITES)
    return (fixed.index(name), "") if name in fixed else (len(fixed), name)


def quality_key(name: str):
    return (QUALITY_ORDER.index(name), "") if name in QUALITY_ORDER else (len(QUALITY_ORDER), name)


def column_key(column: Column):
    return suite_key(column.suite), quality_key(column.quality), column.label


def method_key(name: str):
    """Registration order (baselines first, as methods/__init__.py imports them), then
    unregistered names alphabetically."""
    from mtrl_bench.method import registered_methods

    order = list(registered_methods())
    return (order.index(name), "") if name in order else (len(order), name)


def row_key(row: Row):
    role = ROLE_ORDER.index(row.role) if row.role in ROLE_ORDER else len(ROLE_ORDER)
    return role, method_key(row.method), "[" in row.label, row.label


