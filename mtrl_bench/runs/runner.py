"""`mtrl-bench run`: build the data, train, evaluate periodically and at the end, resumably,
in a locked run directory (the plan of a run comes from :mod:`mtrl_bench.plan`)."""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
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
    MetricsLog,
    RunLock,
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
    import torch
    from tqdm import tqdm

    from mtrl_bench.data.generation import ensure_suite_dataset
    from mtrl_bench.evaluation.agents import DecisionTransformerAgent
    from mtrl_bench.evaluation.evaluator import Evaluator
    from mtrl_bench.method import build_method, gin_name, method_role
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

    cfg, tasks, args, method = plan.cfg, plan.tasks, plan.arguments, plan.method
    path = run_dir_of(plan)
    meta_path = path / "meta.json"
    if request.force and not request.overwrite_committed and tracked_by_git(path):
        raise UserError(f"{path} is a run committed to git; --force would overwrite it. Run "
                        "into another --results-dir, or add --overwrite-committed to redo it")
    if is_finished(path) and not request.force:
        plan.check_reusable(path, "a finished run")
        print(f"run {path} is already finished (use --force to redo it)")
        final = read_json(path / "final.json")
        meta = read_json(meta_path)
        print(_summary(final["tasks"], final["final"], final["best"],
                       meta.get("wall_time_s", 0.0), meta.get("stage_seconds")))
        return path
    if request.force:  # what marks the run resumable or finished goes first: a kill midway leaves
        # a directory that starts over, never one that resumes without its records
        for name in ("meta.json", "checkpoint.pt", "final.json", "episodes.json",
                     "metrics.jsonl"):
            (path / name).unlink(missing_ok=True)
    meta = _read_meta(meta_path)
    if meta.get("status") == "diverged":
        start = (f"its last good checkpoint (step {meta['checkpoint_step']})"
                 if meta.get("checkpoint_step") else "the start (it has no good checkpoint)")
        raise Diverged(f"{path} diverged before ({meta.get('diverged', 'non-finite numbers')})"
                       f" and would again from {start}: change a setting (that is a new run) "
                       "or pass --force to start it over")
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
    n = len(tasks)
    # every object gets all of its arguments explicitly: what ran is what plan.identity says
    trainer = Trainer(datasets, **{**args["Trainer"],
                                   "method": build_method(method, **args[gin_name(method)])},
                      model_config=PromptDTConfig(**args["PromptDTConfig"]))
    total_steps = trainer.total_steps
    metrics = MetricsLog(path / "metrics.jsonl")
    checkpoint = path / "checkpoint.pt"
    if checkpoint.exists():
        plan.check_reusable(path, "the checkpoint of an unfinished run")
        trainer.load_checkpoint(checkpoint)
        print(f"resuming {path} from step {trainer.step}/{total_steps}")
    metrics.truncate_after(trainer.step)
    if trainer.step and len(metrics.records()) < meta.get("records_at_checkpoint", 0):
        raise UserError(f"{path}: metrics.jsonl lacks records its checkpoint (step "
                        f"{trainer.step}) was made after; pass --force to start over")
    run_numerics = numerics(trainer.device)
    earlier = meta.get("numerics")
    if earlier and earlier.get("key") != run_numerics["key"]:
        print(f"note: {path} was started under other machine numerics ("
              f"{numerics_summary(earlier)}) than it resumes under "
              f"({numerics_summary(run_numerics)}); its record says so", file=sys.stderr)
        meta["numerics_mixed"] = sorted({*meta.get("numerics_mixed", [earlier["key"]]),
                                         run_numerics["key"]})
    meta.update({
        "method": method, "suite": cfg.suite, "tasks": tasks, "quality": cfg.quality,
        "seed": cfg.seed, "preset": request.preset, "git_commit": git_commit(),
        "versions": versions(), "device": device_name(trainer.device), "numerics": run_numerics,
        "status": "running",
        "started": meta.get("started") or datetime.datetime.now().isoformat(timespec="seconds"),
        "total_steps": total_steps, "sequences_per_step": trainer.sequences_per_step,
        "cell": plan.cell, "identity": plan.identity, "arguments": args,
        "streams": trainer.streams,
        "role": method_role(method).as_dict(),
        "default_method_identity": plan.default_method_identity,
    })
    earlier_wall = meta.get("wall_time_s", 0.0)  # sessions before a resume, to their checkpoint
    atomic_write_json(meta_path, meta)
    atomic_write_text(path / "config.gin", operative_config(plan))
    wandb = WandbMirror(request.wandb, path, f"{cfg.suite}/{cfg.quality}/{method}/seed{cfg.seed}",
                   {"method": method, **meta})
    eval_every = cfg.steps(cfg.eval_every_sequences, n)

    def record(entry: dict) -> None:
        metrics.append(entry)
        wandb.log(entry)

    agent = DecisionTransformerAgent.from_datasets(
        trainer.model, datasets, tasks, masks=trainer.masks,
        target_returns=target_return(cfg.eval_target_return),
        autocast_dtype=torch.bfloat16 if trainer.autocast else None)
    bar = tqdm(total=total_steps, initial=trainer.step, desc=f"{method} {cfg.suite}",
               unit="step", disable=not request.progress, dynamic_ncols=True)

    def on_metrics(entry: dict) -> None:
        record(entry)
        if entry["kind"] == "train":
            bar.update(entry["step"] - bar.n)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", seq_s=f"{entry['sequences_per_s']:.0f}")

    # evaluation workers as many as the run's threads, unless bound (Evaluator.workers)
    evaluator_args = {**args["Evaluator"],
                      "workers": args["Evaluator"]["workers"] or request.threads}
    with _record_stop(meta_path, meta), Evaluator(tasks, **evaluator_args) as evaluator:
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
                record(result.metrics_record(trainer.step))
                bar.set_postfix(success=f"{100 * result.mean_success:.1f}%")
            with clock.timing("checkpoints"):
                trainer.save_checkpoint(checkpoint)
            meta["checkpoint_step"] = trainer.step
            meta["records_at_checkpoint"] = len(metrics.records())
            meta["wall_time_s"] = earlier_wall + time.perf_counter() - started
            meta["stage_seconds"] = clock.seconds
            atomic_write_json(meta_path, meta)
        bar.close()
        if request.progress:
            print(f"final evaluation: {n} tasks x {cfg.final_eval_goals} goals")
        trainer.check_weights_finite()
        with _single_thread_on_cpu(trainer.device), clock.timing("final_evaluation"):
            result = evaluator.evaluate(agent, num_goals=cfg.final_eval_goals,
                                        progress=request.progress)
    final = result.to_dict(trainer.step)
    if not any(r["step"] == trainer.step for r in metrics.records("eval")):
        record({"kind": "eval", **final})
    best = max(metrics.records("eval"), key=lambda r: (r["mean_success"], r["step"]))
    atomic_write_json(path / "episodes.json", result.episode_dicts())
    atomic_write_json(path / "final.json", {
        "tasks": tasks, "final": final,
        "best": {**best, "label": "best over evaluations (chosen on the evaluation episodes)"},
        **({"masks": trainer.mask_movement()} if trainer.masks is not None else {}),
    })
    wall = earlier_wall + time.perf_counter() - started
    meta.update({"status": "finished", "wall_time_s": wall, "stage_seconds": clock.seconds,
                 "finished": datetime.datetime.now().isoformat(timespec="seconds")})
    atomic_write_json(meta_path, meta)
    wandb.finish()
    print(_summary(tasks, final, best, wall, clock.seconds))
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
        identity = _read_meta(meta_path).get("identity")
        if (identity and identity != plan.identity
                and without_fingerprint(identity) == mine):
            print(f"note: the files in {plan.cfg.data.split(':', 1)[1]} changed since "
                  f"{meta_path.parent} read them; this is another run, in another cell",
                  file=sys.stderr)
            return


def _read_meta(path: Path) -> dict:
    """meta.json, or {} where there is none yet (or only an unreadable one, which this run
    rewrites)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _record_stop(meta_path: Path, meta: dict):
    """Say in meta.json why the run stopped early: diverged (a rerun explains instead of
    crashing again) or interrupted (Ctrl-C: a rerun resumes; tables list it as such, not as
    running)."""
    try:
        yield
    except Diverged as err:
        meta.update(status="diverged", diverged=str(err))
        atomic_write_json(meta_path, meta)
        kept = (f"keeps its last good checkpoint (step {meta['checkpoint_step']})"
                if meta.get("checkpoint_step") else "has no checkpoint (none was good)")
        raise Diverged(f"{err}; {meta_path.parent} {kept}") from None
    except KeyboardInterrupt:
        meta["status"] = "interrupted"
        atomic_write_json(meta_path, meta)
        start = (f"its checkpoint at step {meta['checkpoint_step']}"
                 if meta.get("checkpoint_step") else "the start")
        print(f"{meta_path.parent}: interrupted; the same command resumes it from {start}",
              file=sys.stderr)
        raise


