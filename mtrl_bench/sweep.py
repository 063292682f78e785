"""A sweep is a list of independent runs, one process each (CleanRL's benchmark runner).

Finished runs are skipped; an interrupted one resumes from its checkpoint because each run
is simply ``mtrl-bench run ...`` again. Executors: ``local`` (N processes at a time, one GPU
each when several are visible) and ``ray`` (each run a Ray task that asks for its GPU).
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from mtrl_bench.errors import RunLocked, UserError
from mtrl_bench.rundir import is_finished, lock_holder


@dataclass(frozen=True)
class RunSpec:
    method: str
    suite: str
    quality: str
    seed: int
    extra_args: tuple[str, ...] = field(default=())
    grid: tuple[str, ...] = field(default=())  # gin bindings of one --grid point

    def run_args(self) -> list[str]:
        """The arguments of ``mtrl-bench run`` for this run."""
        bindings = [arg for binding in self.grid for arg in ("--gin_binding", binding)]
        return ["--method", self.method, "--suite", self.suite, "--quality", self.quality,
                "--seed", str(self.seed), *self.extra_args, *bindings]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mtrl_bench", "run", *self.run_args()]

    @property
    def label(self) -> str:
        point = f"[{', '.join(self.grid)}]" if self.grid else ""
        return f"{self.suite}/{self.quality}/{self.method}{point}/seed{self.seed}"


def parse_grid(grids: list[str]) -> list[tuple[str, ...]]:
    """``["SOCODT_BETA_MIN=1,5,10", "socodt.alpha=10,20"]`` -> every combination, each a
    tuple of gin bindings; one empty point without grids. Values are gin literals and may
    not contain commas."""
    axes = []
    for grid in grids:
        key, sep, values = grid.partition("=")
        key, items = key.strip(), [v.strip() for v in values.split(",")]
        if not sep or not key or not all(items):
            raise UserError(f"bad --grid {grid!r}: expected NAME=V1,V2,... (e.g. "
                            "'SOCODT_BETA_MIN=1,5,10' or 'Trainer.learning_rate=1e-4,3e-4')")
        flag = {"Run.suite": "--suites", "Run.quality": "--qualities", "Run.seed": "--seeds"}
        if key in flag:
            raise UserError(f"--grid {key}: the sweep sets it; use {flag[key]}")
        if len(set(items)) != len(items):
            raise UserError(f"--grid {grid!r} repeats a value")
        axes.append([f"{key} = {item}" for item in items])
    return [tuple(point) for point in itertools.product(*axes)]


def build_grid(methods, suites, qualities, seeds, extra_args=(), grid=((),)) -> list[RunSpec]:
    from mtrl_bench.data import QUALITIES
    from mtrl_bench.method import get_method_class
    from mtrl_bench.suites import resolve_suite

    for method in methods:
        get_method_class(method)  # UserError on an unknown name, before anything runs
    for suite in suites:
        resolve_suite(suite)
    for quality in qualities:
        if quality not in QUALITIES:
            raise UserError(f"unknown quality {quality!r}; valid: {', '.join(QUALITIES)}")
    return [
        RunSpec(m, s, q, seed, tuple(extra_args), point)
        for s, q, m, point, seed in itertools.product(suites, qualities, methods, grid, seeds)
    ]


def _run_one(spec: RunSpec, env: dict[str, str] | None = None) -> tuple[str, int]:
    result = subprocess.run(spec.command(), env=env)
    return spec.label, result.returncode


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as ids for CUDA_VISIBLE_DEVICES (honouring it)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except ImportError:
        return []
    inherited = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
                 if g.strip()]
    return inherited[:count] if inherited else [str(i) for i in range(count)]


def run_local(specs: list[RunSpec], parallel: int | None = None) -> dict[str, int]:
    """Run specs as subprocesses, ``parallel`` at a time (default: one per GPU, else one).

    With several GPUs each run takes a free one from a pool and gives it back when it ends,
    so runs of different lengths never share a GPU while another idles."""
    gpus = _visible_gpus()
    parallel = parallel or max(1, len(gpus))
    free: queue.Queue[str] = queue.Queue()
    for i in range(parallel):
        free.put(gpus[i % len(gpus)] if gpus else "")

    def launch(spec):
        gpu = free.get()
        try:
            env = dict(os.environ)
            if len(gpus) > 1:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            return _run_one(spec, env)
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return dict(pool.map(launch, specs))


def run_ray(specs: list[RunSpec], address: str | None, gpus_per_run: float) -> dict[str, int]:
    """Each run becomes a Ray task running the same ``mtrl-bench run`` command."""
    try:
        import ray
    except ImportError as err:
        raise UserError("the ray executor needs Ray: pip install 'mtrl-bench[ray]'") from err
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    try:
        remote = ray.remote(num_gpus=gpus_per_run, num_cpus=1)(_run_one)
        return dict(ray.get([remote.remote(spec) for spec in specs]))
    finally:
        ray.shutdown()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--suites", nargs="+", required=True)
    parser.add_argument("--qualities", nargs="+", default=["near-optimal"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                        help="a gin binding or macro and its values, each value its own cell "
                             "(repeatable: the product); applied to the methods it affects, "
                             "e.g. 'SOCODT_BETA_MIN=1,5,10'")
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("--parallel", type=_positive, default=None,
                        help="local executor: runs at a time (default: one per GPU, else 1)")
    parser.add_argument("--address", default=None,
                        help="ray executor: cluster address (default: start a local instance)")
    parser.add_argument("--gpus-per-run", type=float, default=None,
                        help="ray executor: GPUs each run asks for (default 1 if CUDA, else 0)")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("run_args", nargs=argparse.REMAINDER,
                        help="after '--': extra arguments for every `mtrl-bench run`")


def _prepare_datasets(plans: list[tuple], regenerate: bool = False) -> None:
    """Generate each missing dataset (every one, with ``regenerate``) once here, before runs
    that share it start in parallel (each would otherwise generate it with every core at the
    same time). ``plans``: (run plan, its data dir) pairs."""
    from mtrl_bench.data import generate_suite_dataset

    done = set()
    for plan, data_dir in plans:
        if plan.external is not None:  # read from the user's folder, nothing to generate
            continue
        cfg = plan.cfg
        key = (tuple(plan.tasks), cfg.quality, cfg.episodes, cfg.dataset_seed,
               cfg.episode_length, data_dir)
        if key not in done:
            done.add(key)
            generate_suite_dataset(plan.tasks, cfg.quality, data_dir=data_dir,
                                   episodes=cfg.episodes, seed=cfg.dataset_seed,
                                   episode_length=cfg.episode_length, force=regenerate)


def plan_sweep(specs: list[RunSpec]):
    """Plan every spec; returns (runs to do with their plans, finished count, notes, runs
    locked by another process).

    A grid binding that has no effect for a method (say SOCODT_BETA_MIN for promptdt) is
    dropped for that method, and specs that then plan the same run directory run once; a
    grid binding that no method of the sweep uses, or that the runner sets itself, is an
    error.
    """
    from mtrl_bench.runner import plan_from_argv

    todo, seen, finished, notes, locked = [], set(), 0, [], []
    applied: dict[str, str | None] = {}  # grid binding -> None once used, else why not
    for spec in specs:
        point = list(spec.grid)
        while True:
            try:
                plan, run_args = plan_from_argv(replace(spec, grid=tuple(point)).run_args())
                break
            except UserError as err:
                message = str(err)
                dropped = next((b for b in point if message.startswith(
                    b.split(" = ")[0] + " has no effect")), None)
                if dropped is None or "the runner sets it" in message:
                    raise
                point.remove(dropped)
                applied.setdefault(dropped, message.split(" (and ")[0])
                notes.append(f"{spec.method}: --grid {dropped} has no effect, not applied")
        applied.update({binding: None for binding in point})
        if plan.path in seen:
            continue
        seen.add(plan.path)
        holder = lock_holder(plan.path)
        if holder is not None:
            locked.append(f"{spec.label}: in use by {holder}")
            continue
        if is_finished(plan.path) and not run_args.force:
            plan.check_reusable("a finished run")
            finished += 1
            continue
        todo.append((replace(spec, grid=tuple(point)), plan, run_args.data_dir))
    unused = [(binding, why) for binding, why in applied.items() if why is not None]
    if unused:
        binding, why = unused[0]
        raise UserError(f"--grid {binding!r} has no effect on any method of this sweep: {why}")
    return todo, finished, sorted(set(notes)), locked


def run_command(args: argparse.Namespace) -> int:
    extra = [a for a in args.run_args if a != "--"]
    # regenerated once, here, before the runs: not by every run of the sweep again
    regenerate = "--regenerate-data" in extra
    extra = [a for a in extra if a != "--regenerate-data"]
    if regenerate and args.executor == "ray":
        raise UserError("--regenerate-data with the ray executor: regenerate first with "
                        "`mtrl-bench data ... --force`, then sweep")
    if args.results_dir:
        extra += ["--results-dir", args.results_dir]
    specs = build_grid(args.methods, args.suites, args.qualities, args.seeds, extra,
                       parse_grid(args.grid))
    planned, finished, notes, locked = plan_sweep(specs)
    for note in notes:
        print(f"sweep: {note}")
    todo = [spec for spec, _, _ in planned]
    total = len(todo) + finished + len(locked)
    print(f"sweep: {total} runs, {finished} already finished, {len(locked)} locked by another "
          f"process, {len(todo)} to run ({args.executor})")
    if args.dry_run:
        for spec in todo:
            print("  mtrl-bench " + " ".join(spec.command()[3:]))
        return 0
    if args.executor == "ray":
        gpus = args.gpus_per_run if args.gpus_per_run is not None else float(bool(_visible_gpus()))
        codes = run_ray(todo, args.address, gpus)
    else:
        _prepare_datasets([(plan, data_dir) for _, plan, data_dir in planned], regenerate)
        codes = run_local(todo, args.parallel)
    locked += [f"{label}: locked when it was to start" for label, code in codes.items()
               if code == RunLocked.exit_code]
    failed = {label: code for label, code in codes.items()
              if code not in (0, RunLocked.exit_code)}
    for label, code in failed.items():
        print(f"sweep: {label} failed with exit code {code}", file=sys.stderr)
    for line in locked:
        print(f"sweep: skipped {line} (run the sweep again once it is free)")
    succeeded = sum(code == 0 for code in codes.values())
    print(f"sweep: {succeeded} succeeded, {len(failed)} failed, {len(locked)} skipped as locked")
    return 1 if failed else 0
