"""A sweep is a list of independent runs, one process each (CleanRL's benchmark runner).

Finished runs are skipped; an interrupted one resumes from its checkpoint because each run
is simply ``mtrl-bench run ...`` again. Executors: ``local`` (N processes at a time, one GPU
each when several are visible) and ``ray`` (each run a Ray task that asks for its GPU).
"""

from __future__ import annotations

import itertools
import os
import queue
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from mtrl_bench.errors import RunLocked, UserError
from mtrl_bench.request import RunRequest
from mtrl_bench.runs.rundir import is_finished, lock_holder
from mtrl_bench.runs.runner import run_dir_of


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its request and the gin bindings of its ``--grid`` point."""

    request: RunRequest
    grid: tuple[str, ...] = field(default=())

    def full_request(self) -> RunRequest:
        return replace(self.request, bindings=self.request.bindings + self.grid)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mtrl_bench", "run", *self.full_request().command_args()]

    @property
    def label(self) -> str:
        r = self.request
        point = f"[{', '.join(self.grid)}]" if self.grid else ""
        return f"{r.suite}/{r.quality}/{r.method}{point}/seed{r.seed}"


def parse_grid(grids: list[str]) -> list[tuple[str, ...]]:
    """``["socodt.beta_min=1,5,10", "Trainer.learning_rate=1e-4,3e-4"]`` -> every
    combination, each a tuple of gin bindings; one empty point without grids. Values are gin
    literals and may not contain commas."""
    axes = []
    for grid in grids:
        key, sep, values = grid.partition("=")
        key, items = key.strip(), [v.strip() for v in values.split(",")]
        if not sep or not key or not all(items):
            raise UserError(f"bad --grid {grid!r}: expected NAME=V1,V2,... (e.g. "
                            "'socodt.beta_min=1,5,10' or 'Trainer.learning_rate=1e-4,3e-4')")
        flag = {"Run.suite": "--suites", "Run.quality": "--qualities", "Run.seed": "--seeds"}
        if key in flag:
            raise UserError(f"--grid {key}: the sweep sets it; use {flag[key]}")
        if len(set(items)) != len(items):
            raise UserError(f"--grid {grid!r} repeats a value")
        axes.append([f"{key} = {item}" for item in items])
    return [tuple(point) for point in itertools.product(*axes)]


def build_grid(methods, suites, qualities, seeds, common: RunRequest,
               grid=((),)) -> list[RunSpec]:
    """Every (suite, quality, method, grid point, seed), each ``common`` with that method,
    suite, quality and seed; unknown names are refused before anything runs."""
    from mtrl_bench.data.dataset import check_quality
    from mtrl_bench.method import get_method_class
    from mtrl_bench.suites import resolve_suite

    for method in methods:
        get_method_class(method)
    for suite in suites:
        resolve_suite(suite)
    for quality in qualities:
        check_quality(quality)
    return [
        RunSpec(replace(common, method=m, suite=s, quality=q, seed=seed), point)
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


def size_threads(specs: list[RunSpec], parallel: int | None) -> list[RunSpec]:
    """On a CPU, N runs at a time each keep max(1, cores / N) torch threads (and evaluation
    workers): left at torch's default, every run would spin one thread per core and N runs
    would oversubscribe the cores N times over. A ``--threads`` given to the runs wins; on
    GPUs nothing changes (their runs barely use the CPU's threads)."""
    from mtrl_bench.data.generation import default_workers

    if _visible_gpus():
        return specs
    threads = max(1, default_workers() // (parallel or 1))
    return [spec if spec.request.threads is not None
            else replace(spec, request=replace(spec.request, threads=threads))
            for spec in specs]


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


def _prepare_datasets(planned: list[tuple[RunSpec, object]], regenerate: bool) -> None:
    """Generate each missing dataset (every one, with ``regenerate``) once here, before runs
    that share it start in parallel (each would otherwise generate it with every core at the
    same time)."""
    from mtrl_bench.data.generation import generate_suite_dataset

    done = set()
    for spec, plan in planned:
        if plan.external is not None:  # read from the user's folder, nothing to generate
            continue
        cfg, data_dir = plan.cfg, spec.request.data_dir
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

    A grid binding that has no effect for a method (say socodt.beta_min for promptdt) is
    dropped for that method, and specs that then plan the same run directory run once; a
    grid binding that no method of the sweep uses, or that the runner sets itself, is an
    error.
    """
    todo, seen, finished, notes, locked = [], set(), 0, [], []
    applied: dict[str, str | None] = {}  # grid binding -> None once used, else why not
    for spec in specs:
        point = list(spec.grid)
        while True:
            try:
                plan = replace(spec, grid=tuple(point)).full_request().plan()
                break
            except UserError as err:
                message = str(err)
                dropped = next((b for b in point if message.startswith(
                    b.split(" = ")[0] + " has no effect")), None)
                if dropped is None or "the runner sets it" in message:
                    raise
                point.remove(dropped)
                applied.setdefault(dropped, message.split(" (and ")[0])
                notes.append(f"{spec.request.method}: --grid {dropped} has no effect, "
                             "not applied")
        applied.update({binding: None for binding in point})
        path = run_dir_of(plan)
        if path in seen:
            continue
        seen.add(path)
        holder = lock_holder(path)
        if holder is not None:
            locked.append(f"{spec.label}: in use by {holder}")
            continue
        if is_finished(path) and not spec.request.force:
            plan.check_reusable(path, "a finished run")
            finished += 1
            continue
        todo.append((replace(spec, grid=tuple(point)), plan))
    unused = [(binding, why) for binding, why in applied.items() if why is not None]
    if unused:
        binding, why = unused[0]
        raise UserError(f"--grid {binding!r} has no effect on any method of this sweep: {why}")
    return todo, finished, sorted(set(notes)), locked


def run_sweep(specs: list[RunSpec], *, executor: str = "local", parallel: int | None = None,
              address: str | None = None, gpus_per_run: float | None = None,
              dry_run: bool = False) -> int:
    """Plan the specs, then run those not finished (0: all succeeded, 1: some failed).

    A run request's ``regenerate_data`` regenerates each dataset once, here, before the
    runs, not once per run again."""
    if executor not in ("local", "ray"):
        raise UserError(f"unknown executor {executor!r}; valid: local, ray")
    regenerate = any(spec.request.regenerate_data for spec in specs)
    if regenerate and executor == "ray":
        raise UserError("--regenerate-data with the ray executor: regenerate first with "
                        "`mtrl-bench data ... --force`, then sweep")
    specs = [replace(spec, request=replace(spec.request, regenerate_data=False))
             for spec in specs]
    if executor == "local":
        specs = size_threads(specs, parallel)
    planned, finished, notes, locked = plan_sweep(specs)
    for note in notes:
        print(f"sweep: {note}")
    todo = [spec for spec, _ in planned]
    total = len(todo) + finished + len(locked)
    print(f"sweep: {total} runs, {finished} already finished, {len(locked)} locked by another "
          f"process, {len(todo)} to run ({executor})")
    if dry_run:
        for spec in todo:
            print("  mtrl-bench " + shlex.join(spec.command()[3:]))
        return 0
    if executor == "ray":
        gpus = gpus_per_run if gpus_per_run is not None else float(bool(_visible_gpus()))
        codes = run_ray(todo, address, gpus)
    else:
        _prepare_datasets(planned, regenerate)
        codes = run_local(todo, parallel)
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
