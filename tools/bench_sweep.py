"""Sweep throughput on this machine: runs per hour with ``--parallel 1`` and ``2`` (or what
``--parallel`` lists), each run given max(1, cores / N) torch threads as ``mtrl-bench sweep``
gives them, against N runs at a time each left at torch's default (every run spinning a
thread per core: the oversubscription the sizing avoids).

Each setting runs the same runs (promptdt seeds 0..R-1 of the preset, into a fresh results
folder, with the datasets generated beforehand so only the runs are timed) and reports wall
time, runs/hour and the CPU seconds the runs used (their children's rusage), per run.
Run it with nothing else on the machine.

Usage: python tools/bench_sweep.py [--preset quick] [--runs 4] [--parallel 1 2]
       [--method promptdt] [--binding B ...] [--json F]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from mtrl_bench.data.generation import default_workers
from mtrl_bench.io import atomic_write_json
from mtrl_bench.request import RunRequest
from mtrl_bench.runs.sweep import _prepare_datasets, build_grid, plan_sweep, run_local, size_threads


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(common: RunRequest, method: str, runs: int, parallel: int, sized: bool) -> dict:
    """One sweep of ``runs`` seeds, ``parallel`` at a time, into a fresh results folder."""
    with tempfile.TemporaryDirectory() as results:
        specs = build_grid([method], [common.suite or "mt5"], [common.quality or "near-optimal"],
                           list(range(runs)), replace(common, results_dir=results))
        if sized:
            specs = size_threads(specs, parallel)
        planned, _, _, _ = plan_sweep(specs)
        _prepare_datasets(planned, regenerate=False)
        cpu, started = children_cpu_seconds(), time.perf_counter()
        codes = run_local([spec for spec, _ in planned], parallel)
        wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu
    if any(codes.values()):
        raise SystemExit(f"runs failed: {codes}")
    threads = planned[0][0].request.threads
    return {"parallel": parallel, "threads_per_run": threads or "torch default",
            "runs": runs, "wall_s": wall, "runs_per_hour": 3600 * runs / wall,
            "cpu_s_per_run": cpu / runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--method", default="promptdt")
    parser.add_argument("--runs", type=int, default=4, help="runs per setting (default 4)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--binding", action="append", default=[],
                        help="gin binding for every run (e.g. to shorten the budget)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: a temp one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        common = RunRequest("", preset=args.preset, bindings=tuple(args.binding),
                            device="cpu", data_dir=args.data_dir or scratch, progress=False)
        rows = []
        for parallel in args.parallel:
            for sized in ((True, False) if parallel > 1 else (True,)):
                row = measure(common, args.method, args.runs, parallel, sized)
                rows.append(row)
                print(f"--parallel {parallel}, {row['threads_per_run']} threads/run: "
                      f"{row['wall_s']:.0f} s for {args.runs} runs, "
                      f"{row['runs_per_hour']:.1f} runs/hour, "
                      f"{row['cpu_s_per_run']:.0f} CPU s per run", flush=True)
    base = rows[0]["runs_per_hour"]
    for row in rows[1:]:
        print(f"--parallel {row['parallel']} ({row['threads_per_run']} threads/run) / "
              f"--parallel {rows[0]['parallel']}: {row['runs_per_hour'] / base:.2f}x runs/hour")
    if args.json:
        atomic_write_json(args.json, {"machine_cores": default_workers(), "preset": args.preset,
                                      "bindings": args.binding, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
