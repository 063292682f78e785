"""Run directories with known numbers, in the runner's format, for table and figure tests.

``build(root)`` writes the cases a comparison has to get right and returns what it wrote:
a clear winner, an exact tie, a one-seed baseline, a missing cell, an unfinished run, a run
with another budget, a run with another method parameter, a run whose code default changed
(its recorded identity holds another default) and an under-powered column (3 seeds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtrl_bench.config import default_method_identity
from mtrl_bench.identity import cell_id
from mtrl_bench.method import method_role
from mtrl_bench.runs.rundir import run_dir
from mtrl_bench.suites import FIXED_SUITES

TASKS = FIXED_SUITES["mt5"]
SUITE = "mt5"
BUDGET = 16000
TOTAL_STEPS = 400
EVAL_GOALS, FINAL_GOALS = 5, 50
ENTRIES = 1000  # maskable entries in the fabricated mask records


def identity(method: str, quality: str, budget: int = BUDGET, suite: str = SUITE,
             **params) -> dict:
    protocol = {"run.suite": suite, "run.quality": quality, "run.budget_sequences": budget,
                "run.eval_goals": EVAL_GOALS, "run.final_eval_goals": FINAL_GOALS,
                "trainer.total_steps": TOTAL_STEPS * budget // BUDGET,
                "trainer.precision": "float32"}
    own = default_method_identity(method)  # what `run --method M` records today
    unknown = set(params) - set(own)
    assert not unknown, f"{method} has no parameter(s) {unknown}"
    return {"protocol": protocol, "method": {**own, **params}}


@dataclass
class FakeRun:
    method: str
    quality: str
    seed: int
    success: np.ndarray  # (tasks,)
    returns: np.ndarray
    identity: dict
    path: Path
    status: str = "finished"
    records: list[dict] = field(default_factory=list)
    suite: str = SUITE
    tasks: list[str] = field(default_factory=lambda: list(TASKS))


def eval_record(step: int, goals: int, success: np.ndarray, returns: np.ndarray,
                tasks=TASKS) -> dict:
    return {"kind": "eval", "step": step, "num_goals": goals,
            "success": dict(zip(tasks, success.tolist())),
            "return": dict(zip(tasks, returns.tolist())),
            "mean_success": float(success.mean()), "mean_return": float(returns.mean())}


def mask_records(rng: np.random.Generator, method: str, total_steps: int) -> list[dict]:
    """What ``method`` logs at its mask updates: none without masks; TAMU's β_t, thresholds
    and conflict histogram only for the SoCo-DT family, HarmoDT's k otherwise."""
    if method in ("promptdt", "mtdt"):
        return []
    records = []
    for step in range(50, total_steps, 50):
        sparsity = (0.2 + rng.uniform(-0.01, 0.01, len(TASKS))).tolist()
        counts = rng.integers(0, 30, 40).tolist()
        records.append({
            "kind": "mask", "step": step, "entries": ENTRIES, "sparsity": sparsity,
            "soft_share": rng.uniform(0, 0.001, len(TASKS)).tolist(),
            "mean_soft_value": [None] + rng.uniform(0, 0.5, len(TASKS) - 1).tolist(),
            "conflicted": rng.integers(0, 20, len(TASKS)).tolist(),
            "recovered": rng.integers(0, 20, len(TASKS)).tolist(),
            "beta": 5 + 7.5 * (1 + np.cos(2 * np.pi * step / total_steps)),
            "conflict_threshold": (-10.0 ** rng.uniform(-8, -6, len(TASKS))).tolist(),
            "conflict_hist": {"scale": "signed-log10", "low": -22, "high": 2,
                              "per_decade": 4, "first": 40, "counts": counts}})
        if not method.startswith("socodt"):  # drawn all the same: the rng stream stays put
            for key in ("beta", "conflict_threshold", "conflict_hist"):
                del records[-1][key]
            records[-1]["k"] = 51
    return records


def write(root: Path, run: FakeRun) -> None:
    run.path.mkdir(parents=True)
    role = method_role(run.method)
    meta = {"method": run.method, "suite": run.suite, "tasks": run.tasks, "quality": run.quality,
            "seed": run.seed, "status": run.status, "cell": cell_id(run.identity),
            "identity": run.identity, "role": role.as_dict() if role else None,
            "default_method_identity": default_method_identity(run.method),
            "started": f"2026-11-01T00:00:{run.seed:02d}"}
    (run.path / "meta.json").write_text(json.dumps(meta))
    (run.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.records))
    if run.status == "finished":
        total = run.identity["protocol"]["trainer.total_steps"]
        final = eval_record(total, FINAL_GOALS, run.success, run.returns, run.tasks)
        best = eval_record(total // 2, EVAL_GOALS, np.minimum(run.success + 0.1, 1.0),
                           run.returns + 100, run.tasks)
        (run.path / "episodes.json").write_text(json.dumps(episodes(run)))
        masked = {"masks": movement(run)} if run.method.startswith(("socodt", "harmodt")) else {}
        (run.path / "final.json").write_text(json.dumps(
            {"tasks": run.tasks, "final": final, "best": {**best, "label": "best"}, **masked}))


def episodes(run: FakeRun) -> list[dict]:
    """episodes.json of the final evaluation: goal g of a task succeeds when its golden-ratio
    point g·0.618 mod 1 lies below the task's success rate (so any goal subset has its own
    rate, and all goals give the recorded one up to rounding)."""
    return [{"task": task, "goal": goal, "success": bool((goal * 0.6180339887) % 1 < rate),
             "episode_return": 0.0}
            for task, rate in zip(run.tasks, run.success.tolist())
            for goal in range(FINAL_GOALS)]


def movement(run: FakeRun) -> dict:
    """final.json "masks" of a masked run: how far each task's mask moved, task overlap."""
    return {"moved": [0.001 * (run.seed + 1) * (i + 1) for i in range(len(run.tasks))],
            "overlap": 0.6 + 0.01 * run.seed}


# method -> per quality: (level, seeds); harmodt-m is an exact copy of harmodt-f (a tie)
PLAN = {
    "promptdt": {"near-optimal": (0.45, 5), "sub-optimal": (0.30, 5)},
    "mtdt": {"near-optimal": (0.70, 1)},  # one seed: higher mean, never the reference
    "harmodt-f": {"near-optimal": (0.55, 5), "sub-optimal": (0.35, 5)},
    "harmodt-m": {"near-optimal": (0.55, 5)},
    "socodt": {"near-optimal": (0.80, 5), "sub-optimal": (0.50, 3)},  # sub: under-powered
    "socodt-hard": {"near-optimal": (0.60, 2)},
    "socodt-fixed": {"near-optimal": (0.62, 3)},
}


def build(root: Path) -> list[FakeRun]:
    """Write the run directories under ``root`` (a results/runs folder); return them all."""
    rng = np.random.default_rng(7)
    task_offsets = np.linspace(-0.15, 0.15, len(TASKS))
    runs: list[FakeRun] = []
    arrays: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def add(method, quality, seed, success, returns, ident, status="finished"):
        path = run_dir(root.parent, SUITE, quality, method, cell_id(ident), seed)
        total = ident["protocol"]["trainer.total_steps"]
        records = [eval_record(step, EVAL_GOALS, np.clip(success - 0.1, 0, 1), returns - 50)
                   for step in range(total // 4, total, total // 4)]
        if status == "finished":
            records.append(eval_record(total, FINAL_GOALS, success, returns))
        records += mask_records(rng, method, total)
        run = FakeRun(method, quality, seed, success, returns, ident, path, status,
                      sorted(records, key=lambda r: r["step"]))
        write(root, run)
        runs.append(run)

    for method, qualities in PLAN.items():
        for quality, (level, seeds) in qualities.items():
            if method == "harmodt-m":
                success, returns = arrays[("harmodt-f", quality)]
            else:
                seed_shift = rng.normal(0, 0.04, (seeds, 1))  # moves all tasks of a run
                success = np.clip(level + task_offsets + seed_shift
                                  + rng.normal(0, 0.02, (seeds, len(TASKS))), 0, 1)
                success = np.round(success * 50) / 50  # rates over 50 goals
                returns = np.round(4000 * success + rng.normal(0, 50, success.shape), 1)
                arrays[(method, quality)] = (success, returns)
            for seed in range(seeds):
                add(method, quality, seed, success[seed], returns[seed],
                    identity(method, quality))
    # a run with another budget: its own column, never averaged into the main one
    add("promptdt", "near-optimal", 0, np.full(5, 0.9), np.full(5, 3600.0),
        identity("promptdt", "near-optimal", budget=8_000_000))
    # another method parameter, and a code default that changed (alpha 20 -> 25): own rows
    add("socodt", "near-optimal", 0, np.full(5, 0.1), np.full(5, 400.0),
        identity("socodt", "near-optimal", beta_min=10.0))
    for seed in (0, 1):
        add("socodt", "near-optimal", seed, np.full(5, 0.3 + 0.1 * seed),
            np.full(5, 1200.0 + seed), identity("socodt", "near-optimal", alpha=25.0))
    # unfinished: listed as left out, drawn nowhere
    add("socodt", "near-optimal", 7, np.zeros(5), np.zeros(5),
        identity("socodt", "near-optimal"), status="running")
    return runs


def main_runs(runs: list[FakeRun], method: str, quality: str) -> list[FakeRun]:
    """The finished runs of a method's main cell (default parameters, main budget)."""
    target = identity(method, quality)
    return sorted((r for r in runs if r.identity == target and r.status == "finished"),
                  key=lambda r: r.seed)


def scores(runs: list[FakeRun]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([r.success for r in runs]), np.stack([r.returns for r in runs])


def add_sensitivity_runs(root: Path) -> dict[float, np.ndarray]:
    """socodt on one column with beta_min 1, 5 and 10 (3 seeds each): a --grid's cells.
    Returns {beta_min: (seeds, tasks) final success}."""
    rng = np.random.default_rng(3)
    truth = {}
    for beta_min in (1.0, 5.0, 10.0):
        success = np.round(np.clip(rng.uniform(0.3, 0.9, (3, len(TASKS))), 0, 1) * 50) / 50
        truth[beta_min] = success
        ident = identity("socodt", "near-optimal", beta_min=beta_min)
        for seed in range(3):
            path = run_dir(root.parent, SUITE, "near-optimal", "socodt", cell_id(ident), seed)
            run = FakeRun("socodt", "near-optimal", seed, success[seed], 4000 * success[seed],
                          ident, path, records=[eval_record(TOTAL_STEPS, FINAL_GOALS,
                                                            success[seed], success[seed])])
            write(root, run)
    return truth
