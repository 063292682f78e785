"""`mtrl-bench run`: build the data, train, evaluate periodically and at the end, resumably,
in a locked run directory (the plan of a run comes from :mod:`mtrl_bench.plan`)."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mtrl_bench.config import target_return
from mtrl_bench.errors import Diverged, UserError
from mtrl_bench.io import (
    atomic_write_json,
    atomic_write_text,
    check_writable,
    read_json,
    remove_temporary_files,
)
from mtrl_bench.plan import RunPlan, operative_config
from mtrl_bench.provenance import device_name, git_commit, numerics, versions
from mtrl_bench.request import RunRequest
from mtrl_bench.runs.rundir import (
    CHECKPOINT,
    MetricsLog,
    RunLock,
    RunMeta,
    is_finished,
    numerics_summary,
    run_dir,
    tracked_by_git,
)
from mtrl_bench.runs.tracking import WandbMirror


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` while inside (unchanged for None), then
    restored: a run in a process that goes on (a test, a notebook) leaves it as it was."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _single_thread_on_cpu(device):
    """Evaluating on a CPU, torch's spinning threads fight the env workers for the cores
    (measured 6x slower with 2 threads on 2 cores); the policy forward gets one thread."""
    return _torch_threads(1 if device.type == "cpu" else None)


class StageClock:
    """Wall-clock seconds by stage of a run (data, training with its mask updates inside,
    periodic and final evaluation, checkpoints), added to those of earlier sessions of a
    resumed run; the rest of the wall time is start-up (model, evaluator workers)."""

    STAGES = ("data", "training", "mask_updates", "evaluation", "final_evaluation",
              "checkpoints")

    def __init__(self, earlier: dict | None = None):
        self.seconds = {stage: 0.0 for stage in self.STAGES} | dict(earlier or {})

    @contextlib.contextmanager
    def timing(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - started

    def describe(self) -> str:
        s = self.seconds
        return (f"data {s['data']:.0f} s, training {s['training']:.0f} s (mask updates "
                f"{s['mask_updates']:.1f} s), evaluation {s['evaluation']:.0f} s periodic + "
                f"{s['final_evaluation']:.0f} s final, checkpoints {s['checkpoints']:.1f} s")


def _summary(tasks: list[str], final: dict, best: dict, wall: float,
             stages: dict | None = None) -> str:
    from tabulate import tabulate

    rows = [[t, 100 * final["success"][t], final["return"][t], 100 * best["success"][t]]
            for t in tasks]
    rows.append(["MEAN", 100 * final["mean_success"], final["mean_return"],
                 100 * best["mean_success"]])
    table = tabulate(rows, headers=["task", "success % (final)", "return (final)",
                                    f"success % (best eval, step {best['step']})"],
                     floatfmt=".1f")
    timing = f" ({StageClock(stages).describe()})" if stages else ""
    return f"{table}\nwall time {wall / 60:.1f} min{timing}"


def run_dir_of(plan: RunPlan) -> Path:
    """The run directory of ``plan``: its cell and seed under the results folder it asks for
    (the layout is :func:`mtrl_bench.runs.rundir.run_dir`'s)."""
    return run_dir(plan.results, plan.cfg.suite, plan.cfg.quality, plan.method, plan.cell,
                   plan.cfg.seed)


def run(request: RunRequest) -> Path:
    """Train and evaluate one (suite, quality, method, seed); returns the run directory.

    Everything checkable is checked first (:func:`plan_run`); then the run directory is
    locked for the rest of the run, so no other process can write into it meanwhile, and
    the reuse/resume checks happen under that lock. An I/O error (read-only folder, full
    disk) becomes one line naming the path."""
    from mtrl_bench.data.dataset import check_data_dir

    plan = request.plan()
    path = run_dir_of(plan)
    if plan.external is None:
        check_data_dir(request.data_dir)
    else:
        _note_changed_data(plan)
    try:
        check_writable(path)
    except OSError as err:
        raise UserError(f"cannot write the run directory {path}: {err.strerror}") from None
    try:
        with RunLock(path) as lock:
            if lock.took_over:
                print(f"{path}: its last holder, {lock.took_over}, is gone without releasing "
                      "it; taking over", file=sys.stderr)
            remove_temporary_files(path)  # leftovers of a killed write: nobody else is here
            with _torch_threads(request.threads):  # before any torch work: the run's threads
                return _run_locked(plan, request)
    except OSError as err:
        where = err.filename or path
        raise UserError(f"{err.strerror or err}: {where}") from None


def _run_locked(plan: RunPlan, request: RunRequest) -> Path:
    """The run, its directory locked: reuse a finished run, or build everything and train
    until done, then finish."""
    path = run_dir_of(plan)
    if request.force and not request.overwrite_committed and tracked_by_git(path):
        raise UserError(f"{path} is a run committed to git; --force would overwrite it. Run "
                        "into another --results-dir, or add --overwrite-committed to redo it")
    if is_finished(path) and not request.force:
        return _reuse_finished(plan, path)
    if request.force:  # what marks the run resumable or finished goes first: a kill midway leaves
        # a directory that starts over, never one that resumes without its records
        for name in ("meta.json", CHECKPOINT, "final.json", "episodes.json",
                     "metrics.jsonl"):
            (path / name).unlink(missing_ok=True)
    meta = RunMeta.load(path / "meta.json")
    if meta.get("status") == "diverged":
        start = (f"its last good checkpoint (step {meta.get('checkpoint_step')})"
                 if meta.get("checkpoint_step") else "the start (it has no good checkpoint)")
        raise Diverged(f"{path} diverged before ({meta.get('diverged', 'non-finite numbers')})"
                       f" and would again from {start}: change a setting (that is a new run) "
                       "or pass --force to start it over")
    session = _build(plan, request, path, meta)
    result = _train_until_done(session)
    return _finish(session, result)


def _reuse_finished(plan: RunPlan, path: Path) -> Path:
    plan.check_reusable(path, "a finished run")
    print(f"run {path} is already finished (use --force to redo it)")
    final = read_json(path / "final.json")
    meta = read_json(path / "meta.json")
    print(_summary(final["tasks"], final["final"], final["best"],
                  meta.get("wall_time_s", 0.0), meta.get("stage_seconds")))
    return path


@dataclass
class _Session:
    """Everything one session of a run works with, from :func:`_build` on."""

    plan: RunPlan
    request: RunRequest
    path: Path
    meta: RunMeta
    clock: StageClock
    started: float  # perf_counter at the start of this session
    earlier_wall: float  # wall time of the sessions before a resume, to their checkpoint
    datasets: list
    trainer: object  # training.trainer.Trainer
    metrics: MetricsLog
    wandb: WandbMirror

    def wall(self) -> float:
        return self.earlier_wall + time.perf_counter() - self.started

    def record(self, entry: dict) -> None:
        self.metrics.append(entry)
        self.wandb.log(entry)


def _build(plan: RunPlan, request: RunRequest, path: Path, meta: RunMeta) -> _Session:
    """The data (generated if missing), the trainer with its method (resumed from the
    checkpoint if there is one), the metrics log cut back to it, and the run's record."""
    from mtrl_bench.data.generation import ensure_suite_dataset
    from mtrl_bench.method import build_method, gin_name, method_role
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

    cfg, tasks, args, method = plan.cfg, plan.tasks, plan.arguments, plan.method
    started = time.perf_counter()
    clock = StageClock(meta.get("stage_seconds"))
    with clock.timing("data"):
        if plan.external is None:
            datasets = ensure_suite_dataset(
                tasks, cfg.quality, data_dir=request.data_dir, episodes=cfg.episodes,
                seed=cfg.dataset_seed, episode_length=cfg.episode_length,
                workers=request.threads, progress=request.progress,
                force=request.regenerate_data)
        else:
            if request.regenerate_data:
                raise UserError(f"--regenerate-data: {cfg.data} is not generated by "
                                "mtrl-bench")
            datasets = plan.external.load()
    # every object gets all of its arguments explicitly: what ran is what plan.identity says
    trainer = Trainer(datasets, **{**args["Trainer"],
                                   "method": build_method(method, **args[gin_name(method)])},
                      model_config=PromptDTConfig(**args["PromptDTConfig"]))
    metrics = MetricsLog(path / "metrics.jsonl")
    if (path / CHECKPOINT).exists():
        plan.check_reusable(path, "the checkpoint of an unfinished run")
        trainer.load_checkpoint(path / CHECKPOINT)
        print(f"resuming {path} from step {trainer.step}/{trainer.total_steps}")
    metrics.truncate_after(trainer.step)
    if trainer.step and len(metrics.records()) < meta.get("records_at_checkpoint", 0):
        raise UserError(f"{path}: metrics.jsonl lacks records its checkpoint (step "
                        f"{trainer.step}) was made after; pass --force to start over")
    earlier = meta.get("numerics")
    mixed = meta.start({
        "method": method, "suite": cfg.suite, "tasks": tasks, "quality": cfg.quality,
        "seed": cfg.seed, "preset": request.preset, "git_commit": git_commit(),
        "versions": versions(), "device": device_name(trainer.device),
        "numerics": numerics(trainer.device), "status": "running", "started": None,
        "total_steps": trainer.total_steps, "sequences_per_step": trainer.sequences_per_step,
        "cell": plan.cell, "identity": plan.identity, "arguments": args,
        "streams": trainer.streams, "role": method_role(method).as_dict(),
        "default_method_identity": plan.default_method_identity,
    })
    if mixed:
        print(f"note: {path} was started under other machine numerics ("
              f"{numerics_summary(earlier)}) than it resumes under "
              f"({numerics_summary(meta.get('numerics'))}); its record says so",
              file=sys.stderr)
    atomic_write_text(path / "config.gin", operative_config(plan))
    wandb = WandbMirror(request.wandb, path, f"{cfg.suite}/{cfg.quality}/{method}/seed{cfg.seed}",
                        {"method": method, **meta.data})
    return _Session(plan, request, path, meta, clock, started, meta.get("wall_time_s", 0.0),
                    datasets, trainer, metrics, wandb)


def _train_until_done(session: _Session):
    """Train to the end of the budget, evaluating every ``Run.eval_every_sequences`` on the
    periodic goals and checkpointing at every evaluation and checkpoint interval, then
    evaluate on all the final goals; returns the final evaluation's result."""
    import torch
    from tqdm import tqdm

    from mtrl_bench.evaluation.agents import DecisionTransformerAgent
    from mtrl_bench.evaluation.evaluator import Evaluator

    plan, request, trainer, clock = session.plan, session.request, session.trainer, session.clock
    cfg, tasks, args = plan.cfg, plan.tasks, plan.arguments
    total_steps = trainer.total_steps
    eval_every = cfg.steps(cfg.eval_every_sequences, len(tasks))
    agent = DecisionTransformerAgent.from_datasets(
        trainer.model, session.datasets, tasks, masks=trainer.masks,
        target_returns=target_return(cfg.eval_target_return),
        autocast_dtype=torch.bfloat16 if trainer.autocast else None)
    bar = tqdm(total=total_steps, initial=trainer.step, desc=f"{plan.method} {cfg.suite}",
               unit="step", disable=not request.progress, dynamic_ncols=True)

    def on_metrics(entry: dict) -> None:
        session.record(entry)
        if entry["kind"] == "train":
            bar.update(entry["step"] - bar.n)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", seq_s=f"{entry['sequences_per_s']:.0f}")

    # evaluation workers as many as the run's threads, unless bound (Evaluator.workers)
    evaluator_args = {**args["Evaluator"],
                      "workers": args["Evaluator"]["workers"] or request.threads}
    with _record_stop(session.meta), Evaluator(tasks, **evaluator_args) as evaluator:
        while trainer.step < total_steps:
            boundary = min(total_steps, (trainer.step // eval_every + 1) * eval_every,
                           (trainer.step // cfg.checkpoint_every_steps + 1)
                           * cfg.checkpoint_every_steps)
            mask_seconds = trainer.mask_update_seconds
            with clock.timing("training"):
                trainer.train(boundary, on_metrics)
            clock.seconds["mask_updates"] += trainer.mask_update_seconds - mask_seconds
            bar.update(trainer.step - bar.n)
            if trainer.step % eval_every == 0 and trainer.step < total_steps:
                trainer.check_weights_finite()
                with _single_thread_on_cpu(trainer.device), clock.timing("evaluation"):
                    result = evaluator.evaluate(agent, num_goals=cfg.eval_goals)
                session.record(result.metrics_record(trainer.step))
                bar.set_postfix(success=f"{100 * result.mean_success:.1f}%")
            with clock.timing("checkpoints"):
                trainer.save_checkpoint(session.path / CHECKPOINT)
            session.meta.checkpoint(trainer.step, len(session.metrics.records()),
                                    session.wall(), clock.seconds)
        bar.close()
        if request.progress:
            print(f"final evaluation: {len(tasks)} tasks x {cfg.final_eval_goals} goals")
        trainer.check_weights_finite()
        with _single_thread_on_cpu(trainer.device), clock.timing("final_evaluation"):
            return evaluator.evaluate(agent, num_goals=cfg.final_eval_goals,
                                      progress=request.progress)


def _finish(session: _Session, result) -> Path:
    """final.json and episodes.json from the final evaluation, the run marked finished."""
    trainer, tasks, path = session.trainer, session.plan.tasks, session.path
    final = result.to_dict(trainer.step)
    if not any(r["step"] == trainer.step for r in session.metrics.records("eval")):
        session.record({"kind": "eval", **final})
    best = max(session.metrics.records("eval"), key=lambda r: (r["mean_success"], r["step"]))
    atomic_write_json(path / "episodes.json", result.episode_dicts())
    atomic_write_json(path / "final.json", {
        "tasks": tasks, "final": final,
        "best": {**best, "label": "best over evaluations (chosen on the evaluation episodes)"},
        **({"masks": trainer.mask_movement()} if trainer.masks is not None else {}),
    })
    wall = session.wall()
    session.meta.finish(wall, session.clock.seconds)
    session.wandb.finish()
    print(_summary(tasks, final, best, wall, session.clock.seconds))
    print(f"results in {path}")
    return path


def _note_changed_data(plan: RunPlan) -> None:
    """Say so when an earlier run of this method on the same settings read other content
    from the same data folder: the folder changed, and this is a new run (cell)."""
    def without_fingerprint(identity: dict) -> dict:
        return {**identity, "protocol": {k: v for k, v in identity["protocol"].items()
                                         if k != "dataset.fingerprint"}}

    mine = without_fingerprint(plan.identity)
    for meta_path in sorted(run_dir_of(plan).parent.parent.glob("*/seed*/meta.json")):
        identity = RunMeta.load(meta_path).get("identity")
        if (identity and identity != plan.identity
                and without_fingerprint(identity) == mine):
            print(f"note: the files in {plan.cfg.data.split(':', 1)[1]} changed since "
                  f"{meta_path.parent} read them; this is another run, in another cell",
                  file=sys.stderr)
            return


@contextlib.contextmanager
def _record_stop(meta: RunMeta):
    """Say in meta.json why the run stopped early: diverged (a rerun explains instead of
    crashing again) or interrupted (Ctrl-C: a rerun resumes; tables list it as such, not as
    running)."""
    try:
        yield
    except Diverged as err:
        meta.stop("diverged", diverged=str(err))
        kept = (f"keeps its last good checkpoint (step {meta.get('checkpoint_step')})"
                if meta.get("checkpoint_step") else "has no checkpoint (none was good)")
        raise Diverged(f"{err}; {meta.path.parent} {kept}") from None
    except KeyboardInterrupt:
        meta.stop("interrupted")
        start = (f"its checkpoint at step {meta.get('checkpoint_step')}"
                 if meta.get("checkpoint_step") else "the start")
        print(f"{meta.path.parent}: interrupted; the same command resumes it from {start}",
              file=sys.stderr)
        raise


