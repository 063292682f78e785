"""`mtrl-bench run`: build the data, train, evaluate periodically and at the end, resumably.

Budgets are stated in the paper's units (sequences seen, HarmoDT iterations of 8
sequences) and converted to steps of the batched trainer for the suite at hand, so a
preset means the same protocol on MT5 and MT50: HarmoDT trains 1M iterations x 8
sequences = 8M sequences, updates masks every 500 iterations (4000 sequences) and warms
up over 10k iterations (80k sequences).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import gin

from mtrl_bench.errors import Diverged, UserError
from mtrl_bench.identity import (
    binding_entries,
    build_identity,
    cell_id,
    describe_difference,
    ineffective_bindings,
    parameters,
    resolve_arguments,
)
from mtrl_bench.io import (
    atomic_write_json,
    atomic_write_text,
    read_json,
    remove_temporary_files,
)
from mtrl_bench.rundir import MetricsLog, RunLock, is_finished, run_dir

CONFIG_DIR = Path(importlib.import_module("mtrl_bench.configs").__file__).parent
PRESETS = ("quick", "paper", "tiny", "cpu")


@gin.configurable("Run")
@dataclass
class RunConfig:
    """What one run trains on and for how long (bind as ``Run.<field>``)."""

    suite: str = "mt5"
    quality: str = "near-optimal"
    seed: int = 0
    #: "generated" (from Meta-World's scripted experts) or "harmodt:DIR" (the paper's own
    #: data in the HarmoDT/MTDiff layout; --data on the command line)
    data: str = "generated"
    episodes: int = 2000  # generated data: episodes per task (near-optimal ladder length)
    episode_length: int = 500  # generated data: steps per episode
    dataset_seed: int = 0  # generated data: generation seed
    #: the evaluation return-to-go target: "dataset-best" (each task's best return in its
    #: data), "harmodt" (HarmoDT's 4500 for every task) or a number, e.g. "3000"
    eval_target_return: str = "dataset-best"
    budget_sequences: int = 8_000_000  # HarmoDT: 1M iterations x 8 sequences
    batch_size: int = 8  # sequences per task per step
    warmup_sequences: int = 80_000  # HarmoDT: 10k iterations x 8
    mask_update_every_sequences: int = 4_000  # HarmoDT: every 500 iterations x 8
    eval_every_sequences: int = 400_000  # HarmoDT: every 5000 iterations x 8 ... x 10
    eval_goals: int = 10  # goals per task in periodic evaluations (HarmoDT: 10)
    final_eval_goals: int = 50  # all goals (MTDiff's MT50-rand protocol)
    eval_max_steps: int = 500  # steps per evaluation episode (Meta-World: 500)
    checkpoint_every_steps: int = 1000

    def steps(self, sequences: int, num_tasks: int) -> int:
        return max(1, round(sequences / (num_tasks * self.batch_size)))


def parse_gin(method: str, preset: str, gin_files: list[str], bindings: list[str],
              flags: dict | None = None) -> None:
    """base.gin, then the preset, the method's file, the user's files and bindings, then
    the ``Run`` fields given as command-line flags (``--suite`` etc.: {field: value}).

    Bindings the user adds or changes must take effect in this run (see
    :func:`check_bindings_take_effect`), and a flag may not silently override the user's own
    binding of the same field; the package's own files may bind other methods' parameters
    (an ablation's file includes its parent's)."""
    files = _package_files(method, preset)
    user_files = []
    for name in gin_files:
        if not Path(name).exists():
            raise UserError(f"gin file {name!r} does not exist")
        user_files.append(Path(name))
    flag_bindings = [f"Run.{field} = {value!r}" for field, value in (flags or {}).items()]
    try:
        parse_gin_files(files)
        package = binding_entries()
        parse_gin_files(files + user_files, bindings)
        user = binding_entries()
        for field, value in (flags or {}).items():
            key = f"Run.{field}"
            if key in user and user[key] != package.get(key) and user[key] != repr(value):
                raise UserError(f"--{field} {value} and the binding {key} = {user[key]} "
                                "disagree; give one of them")
        if flag_bindings:
            parse_gin_files(files + user_files, list(bindings) + flag_bindings)
    except (ValueError, SyntaxError, KeyError, TypeError, NameError) as err:
        message = " ".join(str(err).split())
        raise UserError(f"bad gin configuration: {message}") from err
    check_bindings_take_effect(method, package, binding_entries())


def _package_files(method: str, preset: str) -> list[Path]:
    """The package's own gin files of a run: base.gin, the preset, the method's file."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    files = [CONFIG_DIR / "base.gin", CONFIG_DIR / "presets" / f"{preset}.gin"]
    method_file = CONFIG_DIR / "methods" / f"{method}.gin"
    if method_file.exists():
        files.append(method_file)
    return files


def default_method_identity(method: str) -> dict | None:
    """The "method" part of the identity a run of ``method`` has with no user bindings
    (its gin file and code defaults); None for a method not registered here. Replaces the
    global gin config."""
    from mtrl_bench.method import gin_name, registered_methods

    method_class = registered_methods().get(method)
    if method_class is None:
        return None
    parse_gin_files(_package_files(method, "paper"))
    arguments = resolve_arguments(method_class, gin_name(method), {"update_interval": 0})
    own = {k: v for k, v in arguments.items()
           if k not in RUNNER_SET["method"] and k not in method_class.unused_parameters}
    return {"name": method, "conditioning": method_class.conditioning, **own}


def parse_gin_files(files: list[Path], bindings=(), skip_unknown: bool = False) -> None:
    """A fresh gin config from ``files`` (includes found in configs/) and ``bindings``."""
    _import_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(str(CONFIG_DIR))
    # gin logs "Path not found" for every include before it tries the search path
    quiet = _DropGinPathNotFound()
    logging.getLogger().addFilter(quiet)
    try:
        gin.parse_config_files_and_bindings([str(f) for f in files], list(bindings),
                                            finalize_config=False, skip_unknown=skip_unknown)
    finally:
        logging.getLogger().removeFilter(quiet)


def _import_configurables() -> None:
    """Gin only knows a configurable once its module is imported."""
    import mtrl_bench.evaluation  # noqa: F401  (Evaluator)
    import mtrl_bench.trainer  # noqa: F401  (Trainer, PromptDTConfig)
    from mtrl_bench.method import registered_methods

    registered_methods()


class _DropGinPathNotFound(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")


#: per built object, the arguments the runner passes itself (and where they come from):
#: binding them in gin would have no effect, so doing so is an error
RUNNER_SET: dict[str, dict[str, str]] = {
    "Trainer": {
        "datasets": "the suite's datasets", "method": "--method (built with its own bindings)",
        "total_steps": "from Run.budget_sequences", "batch_size": "from Run.batch_size",
        "warmup_steps": "from Run.warmup_sequences", "device": "--device",
        "seed": "from Run.seed / --seed", "model_config": "PromptDTConfig.*",
    },
    "PromptDTConfig": {"conditioning": "from the method", "num_tasks": "from the suite"},
    "Evaluator": {
        "tasks": "the suite", "num_goals": "from Run.eval_goals / Run.final_eval_goals",
        "goal_indices": "goals 0..n-1, n from Run.eval_goals / Run.final_eval_goals",
        "max_steps": "from Run.eval_max_steps",
    },
    "method": {"update_interval": "from Run.mask_update_every_sequences"},
}


def _built_objects(method: str) -> dict[str, type]:
    """Gin name -> class of every configurable a run of ``method`` constructs."""
    from mtrl_bench.evaluation import Evaluator
    from mtrl_bench.method import get_method_class, gin_name
    from mtrl_bench.model import PromptDTConfig
    from mtrl_bench.trainer import Trainer

    return {"Run": RunConfig, "PromptDTConfig": PromptDTConfig, "Trainer": Trainer,
            "Evaluator": Evaluator, gin_name(method): get_method_class(method)}


def _runner_set(method: str) -> dict[str, dict[str, str]]:
    from mtrl_bench.method import gin_name

    return {gin_name(method) if owner == "method" else owner: params
            for owner, params in RUNNER_SET.items()}


def _unused(method: str) -> dict[str, dict[str, str]]:
    """{gin name: {parameter: why}} of the parameters the method accepts but ignores."""
    from mtrl_bench.method import get_method_class, gin_name

    unused = get_method_class(method).unused_parameters
    return {gin_name(method): {p: f"{method} does not use it ({why})"
                               for p, why in unused.items()}}


def check_bindings_take_effect(method: str, before: dict[str, str],
                               after: dict[str, str]) -> None:
    """A binding the user added that this run would ignore is an error, not a no-op."""
    from mtrl_bench.data import external_root

    built = {name: {p.name for p in parameters(cls)}
             for name, cls in _built_objects(method).items()}
    unused = _unused(method)
    data = gin.get_bindings("Run").get("data", RunConfig.data)
    if isinstance(data, str) and data != "generated" and external_root(data) is not None:
        unused["Run"] = {field: f"it describes generated data; this run reads {data}"
                         for field in GENERATED_ONLY}
    problems = ineffective_bindings(before, after, built, _runner_set(method), unused)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def _check_run_config(cfg: RunConfig) -> None:
    """Gin accepts any literal: refuse a wrongly typed or out-of-range Run.* value early."""
    for f in dataclasses.fields(cfg):
        value, expected = getattr(cfg, f.name), type(f.default)
        if type(value) is not expected:
            raise UserError(f"Run.{f.name} must be {expected.__name__}, got {value!r}")
        if expected is int and f.name.endswith("seed") and value < 0:
            raise UserError(f"Run.{f.name} must be >= 0, got {value}")
        if expected is int and not f.name.endswith("seed") and value < 1:
            raise UserError(f"Run.{f.name} must be >= 1, got {value}")
    target_return(cfg.eval_target_return)


#: Run fields that only describe generated data: bound with external data they do nothing
GENERATED_ONLY = ("episodes", "episode_length", "dataset_seed")


def target_return(text: str) -> float | None:
    """Run.eval_target_return as the agent takes it: None = each task's best data return."""
    from mtrl_bench.data import HARMODT_TARGET_RETURN

    if text == "dataset-best":
        return None
    if text == "harmodt":
        return HARMODT_TARGET_RETURN
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise UserError(f"Run.eval_target_return must be 'dataset-best', 'harmodt' or a "
                        f"positive number, got {text!r}")
    return value


@dataclass
class RunPlan:
    """One configured run: what it trains on, the arguments of everything it builds, its
    identity and, from that, its directory."""

    cfg: RunConfig
    tasks: list[str]
    method: str
    arguments: dict[str, dict]  # gin name -> resolved keyword arguments
    identity: dict  # see mtrl_bench.identity
    path: Path
    external: object | None = None  # data.ExternalSuite when the data are not generated

    @property
    def cell(self) -> str:
        return cell_id(self.identity)

    def check_reusable(self, what: str) -> None:
        """Refuse to skip to, or resume, a run directory whose identity is not this one's
        (a directory is named by its identity, so this only trips on copied folders)."""
        recorded = read_json(self.path / "meta.json").get("identity")
        if recorded != self.identity:
            difference = (describe_difference(recorded, self.identity) if recorded
                          else "it records no identity")
            raise UserError(f"{self.path} holds {what} of another run ({difference}); use "
                            "--force to replace it, or another --results-dir")


def precision(bf16: bool, device) -> str:
    """What the trainer computes in: bf16 autocast only on CUDA (Trainer.autocast)."""
    return "bfloat16-autocast" if bf16 and device.type == "cuda" else "float32"


def plan_run(method: str, preset: str = "paper", gin_files=(), bindings=(),
             results=None, device: str = "auto", flags: dict | None = None) -> RunPlan:
    """Parse the configuration of one run and resolve every argument of every object it
    will build (gin is global: one run per process)."""
    from mtrl_bench.data import (
        GENERATOR_VERSION,
        QUALITIES,
        external_root,
        plan_external_suite,
    )
    from mtrl_bench.method import get_method_class, gin_name
    from mtrl_bench.suites import canonical_suite_name, resolve_suite
    from mtrl_bench.trainer import resolve_device

    method_class = get_method_class(method)
    parse_gin(method, preset, list(gin_files), list(bindings), flags)
    cfg = RunConfig()
    _check_run_config(cfg)
    tasks = resolve_suite(cfg.suite)
    cfg.suite = canonical_suite_name(cfg.suite)
    root = external_root(cfg.data)
    if root is not None:
        cfg.data = f"harmodt:{root}"  # one spelling per folder
    if cfg.quality not in QUALITIES:
        raise UserError(f"unknown quality {cfg.quality!r}; valid: {', '.join(QUALITIES)}")
    torch_device = resolve_device(device)
    n = len(tasks)
    objects = _built_objects(method)
    own = gin_name(method)
    derived = {
        "PromptDTConfig": {"conditioning": method_class.conditioning, "num_tasks": n},
        "Trainer": {"method": method, "total_steps": cfg.steps(cfg.budget_sequences, n),
                    "batch_size": cfg.batch_size,
                    "warmup_steps": cfg.steps(cfg.warmup_sequences, n),
                    "device": str(torch_device), "seed": cfg.seed},
        "Evaluator": {"num_goals": max(cfg.eval_goals, cfg.final_eval_goals),
                      "goal_indices": None, "max_steps": cfg.eval_max_steps},
        own: {"update_interval": cfg.steps(cfg.mask_update_every_sequences, n)},
    }
    arguments = {"Run": dataclasses.asdict(cfg)}
    skip = {"Trainer": ("datasets", "model_config"), "Evaluator": ("tasks",)}
    for name in ("PromptDTConfig", "Trainer", own, "Evaluator"):
        arguments[name] = resolve_arguments(objects[name], name, derived[name],
                                            skip.get(name, ()))
    external = None
    if root is None:
        dataset = {"source": "generated", "generator_version": GENERATOR_VERSION}
    else:
        external = plan_external_suite(root, tasks, cfg.quality)
        dataset = external.identity()
    identity = build_identity(method, arguments, own,
                              precision(arguments["Trainer"]["bf16"], torch_device),
                              {**dataset, "tasks": tasks}, derived[own],
                              set(method_class.unused_parameters))
    if external is not None:  # what only describes generated data is no setting here
        for field in GENERATED_ONLY:
            del identity["protocol"][f"run.{field}"]
    _check_arguments(method, tasks, arguments, generated=external is None)
    path = run_dir(results, cfg.suite, cfg.quality, method, cell_id(identity), cfg.seed)
    return RunPlan(cfg, tasks, method, arguments, identity, path, external)


def _check_arguments(method: str, tasks: list[str], arguments: dict[str, dict],
                     generated: bool = True) -> None:
    """Everything checkable about the objects a run will build, checked before any data is
    generated or any step trained: the cheap ones are built and thrown away."""
    from mtrl_bench.data import check_sizes
    from mtrl_bench.datagen import ACTION_DIM, OBS_DIM
    from mtrl_bench.evaluation import Evaluator
    from mtrl_bench.method import build_method, gin_name
    from mtrl_bench.model import PromptDTConfig
    from mtrl_bench.trainer import Trainer

    Trainer.check_arguments(**arguments["Trainer"])
    Evaluator.check_arguments(tasks, **arguments["Evaluator"])
    run, model = arguments["Run"], arguments["PromptDTConfig"]
    if generated:
        check_sizes(run["episodes"], run["dataset_seed"], run["episode_length"])
    if (model["state_dim"], model["act_dim"]) != (OBS_DIM, ACTION_DIM):
        raise UserError(f"PromptDTConfig.state_dim/act_dim must be {OBS_DIM}/{ACTION_DIM} "
                        "(Meta-World's observations and actions), got "
                        f"{model['state_dim']}/{model['act_dim']}")
    if generated and run["episode_length"] < model["prompt_len"]:
        raise UserError(f"Run.episode_length={run['episode_length']} is shorter than the "
                        f"prompt (PromptDTConfig.prompt_len={model['prompt_len']})")
    for name, build in (("PromptDTConfig", lambda a: PromptDTConfig(**a)),
                        (gin_name(method), lambda a: build_method(method, **a))):
        try:
            build(arguments[name])
        except (ValueError, TypeError, ArithmeticError) as err:
            message = str(err).split("In call to configurable")[0]
            raise UserError(f"{name}: {' '.join(message.split())}") from None


def operative_config(plan: RunPlan) -> str:
    """config.gin: every argument of every object the run built, as it ran (code defaults
    included). Values the runner sets are comments, so the file can be passed back with
    --gin_file to repeat the run."""
    runner_set, unused = _runner_set(plan.method), _unused(plan.method)
    lines = ["# mtrl-bench: the arguments of every object this run built, as they ran.",
             "# Lines starting '# (runner)' are set by the runner, not by gin; '# (unused)'",
             "# are accepted by the method's class but not used by it.",
             f"# Computed in {plan.identity['protocol']['trainer.precision']} "
             "(Trainer.bf16 applies on CUDA only).", ""]
    for owner, args in plan.arguments.items():
        lines.append(f"# {owner}")
        for name, value in args.items():
            text = f"{owner}.{name} = {value!r}"
            if name in runner_set.get(owner, {}):
                text = f"# (runner) {text}  # {runner_set[owner][name]}"
            elif name in unused.get(owner, {}):
                text = f"# (unused) {text}"
            lines.append(text)
        lines.append("")
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    names = ("mtrl-bench", "torch", "metaworld", "mujoco", "gymnasium", "numpy", "gin-config")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}"


class _Wandb:
    """Optional mirror of metrics.jsonl to Weights & Biases (local files stay the truth)."""

    def __init__(self, mode: str | None, run_path: Path, name: str, config: dict):
        self.run = None
        if not mode:
            return
        try:
            import wandb
        except ImportError as err:
            raise UserError("--wandb needs wandb: pip install 'mtrl-bench[wandb]'") from err
        self.run = wandb.init(project="mtrl-bench", name=name, dir=str(run_path), mode=mode,
                              config=config, resume="allow",
                              id=re.sub(r"[:;,#?/' ]", "-", name))

    def log(self, record: dict) -> None:
        if self.run is None:
            return
        flat = {}
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                flat[f"{record['kind']}/{key}"] = value
            elif isinstance(value, dict) and key in ("success", "return"):
                flat.update({f"{record['kind']}/{key}/{t}": v for t, v in value.items()})
        self.run.log(flat, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


@contextlib.contextmanager
def _single_thread_on_cpu(device):
    """Evaluating on a CPU, torch's spinning threads fight the env workers for the cores
    (measured 6x slower with 2 threads on 2 cores); the policy forward gets one thread."""
    import torch

    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _summary(tasks: list[str], final: dict, best: dict, wall: float) -> str:
    from tabulate import tabulate

    rows = [[t, 100 * final["success"][t], final["return"][t], 100 * best["success"][t]]
            for t in tasks]
    rows.append(["MEAN", 100 * final["mean_success"], final["mean_return"],
                 100 * best["mean_success"]])
    table = tabulate(rows, headers=["task", "success % (final)", "return (final)",
                                    f"success % (best eval, step {best['step']})"],
                     floatfmt=".1f")
    return f"{table}\nwall time {wall / 60:.1f} min"


def run(method: str, preset: str = "paper", *, gin_files=(), bindings=(), flags=None,
        device="auto", results=None, data_dir=None, force=False, wandb_mode=None,
        progress=True, regenerate_data=False) -> Path:
    """Train and evaluate one (suite, quality, method, seed); returns the run directory.

    Everything checkable is checked first (:func:`plan_run`); then the run directory is
    locked for the rest of the run, so no other process can write into it meanwhile, and
    the reuse/resume checks happen under that lock. An I/O error (read-only folder, full
    disk) becomes one line naming the path."""
    from mtrl_bench.data import check_data_dir

    plan = plan_run(method, preset, gin_files, bindings, results, device, flags)
    path = plan.path
    if plan.external is None:
        check_data_dir(data_dir)
    else:
        _note_changed_data(plan)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"cannot write the run directory {path}: {err.strerror}") from None
    try:
        with RunLock(path) as lock:
            if lock.took_over:
                print(f"{path}: its last holder, {lock.took_over}, is gone without releasing "
                      "it; taking over", file=sys.stderr)
            remove_temporary_files(path)  # leftovers of a killed write: nobody else is here
            return _run_locked(plan, preset, data_dir, force, wandb_mode, progress,
                               regenerate_data)
    except OSError as err:
        where = err.filename or path
        raise UserError(f"{err.strerror or err}: {where}") from None


def _run_locked(plan: RunPlan, preset: str, data_dir, force: bool, wandb_mode,
                progress: bool, regenerate_data: bool) -> Path:
    import torch
    from tqdm import tqdm

    from mtrl_bench.data import ensure_suite_dataset
    from mtrl_bench.evaluation import DecisionTransformerAgent, Evaluator
    from mtrl_bench.method import build_method, gin_name, method_role
    from mtrl_bench.model import PromptDTConfig
    from mtrl_bench.trainer import Trainer

    cfg, tasks, path, args, method = plan.cfg, plan.tasks, plan.path, plan.arguments, plan.method
    meta_path = path / "meta.json"
    if is_finished(path) and not force:
        plan.check_reusable("a finished run")
        print(f"run {path} is already finished (use --force to redo it)")
        final = read_json(path / "final.json")
        print(_summary(final["tasks"], final["final"], final["best"],
                       read_json(meta_path).get("wall_time_s", 0.0)))
        return path
    if force:  # what marks the run resumable or finished goes first: a kill midway leaves
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

    if plan.external is None:
        datasets = ensure_suite_dataset(
            tasks, cfg.quality, data_dir=data_dir, episodes=cfg.episodes,
            seed=cfg.dataset_seed, episode_length=cfg.episode_length, progress=progress,
            force=regenerate_data)
    else:
        if regenerate_data:
            raise UserError(f"--regenerate-data: {cfg.data} is not generated by mtrl-bench")
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
        plan.check_reusable("the checkpoint of an unfinished run")
        trainer.load_checkpoint(checkpoint)
        print(f"resuming {path} from step {trainer.step}/{total_steps}")
    metrics.truncate_after(trainer.step)
    if trainer.step and len(metrics.records()) < meta.get("records_at_checkpoint", 0):
        raise UserError(f"{path}: metrics.jsonl lacks records its checkpoint (step "
                        f"{trainer.step}) was made after; pass --force to start over")
    meta.update({
        "method": method, "suite": cfg.suite, "tasks": tasks, "quality": cfg.quality,
        "seed": cfg.seed, "preset": preset, "git_commit": _git_commit(),
        "versions": _versions(), "device": _device_name(trainer.device), "status": "running",
        "started": meta.get("started") or datetime.datetime.now().isoformat(timespec="seconds"),
        "total_steps": total_steps, "sequences_per_step": trainer.sequences_per_step,
        "cell": plan.cell, "identity": plan.identity, "arguments": args,
        "role": method_role(method).as_dict(),
    })
    earlier_wall = meta.get("wall_time_s", 0.0)  # sessions before a resume, to their checkpoint
    atomic_write_json(meta_path, meta)
    atomic_write_text(path / "config.gin", operative_config(plan))
    wandb = _Wandb(wandb_mode, path, f"{cfg.suite}/{cfg.quality}/{method}/seed{cfg.seed}",
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
               unit="step", disable=not progress, dynamic_ncols=True)

    def on_metrics(entry: dict) -> None:
        record(entry)
        if entry["kind"] == "train":
            bar.update(entry["step"] - bar.n)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", seq_s=f"{entry['sequences_per_s']:.0f}")

    with Evaluator(tasks, **args["Evaluator"]) as evaluator, _record_divergence(meta_path, meta):
        while trainer.step < total_steps:
            boundary = min(total_steps, (trainer.step // eval_every + 1) * eval_every,
                           (trainer.step // cfg.checkpoint_every_steps + 1)
                           * cfg.checkpoint_every_steps)
            trainer.train(boundary, on_metrics)
            bar.update(trainer.step - bar.n)
            if trainer.step % eval_every == 0 and trainer.step < total_steps:
                trainer.check_weights_finite()
                with _single_thread_on_cpu(trainer.device):
                    result = evaluator.evaluate(agent, num_goals=cfg.eval_goals)
                record(result.metrics_record(trainer.step))
                bar.set_postfix(success=f"{100 * result.mean_success:.1f}%")
            trainer.save_checkpoint(checkpoint)
            meta["checkpoint_step"] = trainer.step
            meta["records_at_checkpoint"] = len(metrics.records())
            meta["wall_time_s"] = earlier_wall + time.perf_counter() - started
            atomic_write_json(meta_path, meta)
        bar.close()
        if progress:
            print(f"final evaluation: {n} tasks x {cfg.final_eval_goals} goals")
        trainer.check_weights_finite()
        with _single_thread_on_cpu(trainer.device):
            result = evaluator.evaluate(agent, num_goals=cfg.final_eval_goals,
                                        progress=progress)
    final = result.to_dict(trainer.step)
    if not any(r["step"] == trainer.step for r in metrics.records("eval")):
        record({"kind": "eval", **final})
    best = max(metrics.records("eval"), key=lambda r: (r["mean_success"], r["step"]))
    atomic_write_json(path / "episodes.json", result.episode_dicts())
    atomic_write_json(path / "final.json", {
        "tasks": tasks, "final": final,
        "best": {**best, "label": "best over evaluations (chosen on the evaluation episodes)"},
    })
    wall = earlier_wall + time.perf_counter() - started
    meta.update({"status": "finished", "wall_time_s": wall,
                 "finished": datetime.datetime.now().isoformat(timespec="seconds")})
    atomic_write_json(meta_path, meta)
    wandb.finish()
    print(_summary(tasks, final, best, wall))
    print(f"results in {path}")
    return path


def _note_changed_data(plan: RunPlan) -> None:
    """Say so when an earlier run of this method on the same settings read other content
    from the same data folder: the folder changed, and this is a new run (cell)."""
    def without_fingerprint(identity: dict) -> dict:
        return {**identity, "protocol": {k: v for k, v in identity["protocol"].items()
                                         if k != "dataset.fingerprint"}}

    mine = without_fingerprint(plan.identity)
    for meta_path in sorted(plan.path.parent.parent.glob("*/seed*/meta.json")):
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
def _record_divergence(meta_path: Path, meta: dict):
    """Mark the run diverged in meta.json, so a rerun explains instead of crashing again."""
    try:
        yield
    except Diverged as err:
        meta.update(status="diverged", diverged=str(err))
        atomic_write_json(meta_path, meta)
        kept = (f"keeps its last good checkpoint (step {meta['checkpoint_step']})"
                if meta.get("checkpoint_step") else "has no checkpoint (none was good)")
        raise Diverged(f"{err}; {meta_path.parent} {kept}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="see `mtrl-bench methods`")
    parser.add_argument("--suite", help="mt5, mt10, mt30, mt50 or random-K:SEED "
                        "(default: the preset's)")
    parser.add_argument("--quality", help="near-optimal or sub-optimal (default: the preset's)")
    parser.add_argument("--seed", type=int, help="training seed (default 0)")
    parser.add_argument("--data", metavar="SOURCE",
                        help="generated (default) or harmodt:DIR, the paper's own data in the "
                             "HarmoDT/MTDiff layout <DIR>/[<quality>/]<task>/<i>.npz")
    parser.add_argument("--preset", default="paper", help=f"one of {', '.join(PRESETS)} "
                        "(default: paper, the SoCo-DT/HarmoDT protocol)")
    parser.add_argument("--gin_file", action="append", default=[], help="extra .gin file")
    parser.add_argument("--gin_binding", action="append", default=[],
                        help="a gin binding, e.g. 'Trainer.learning_rate = 3e-4'")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--results-dir", default=None,
                        help="results root (default ./results or $MTRL_BENCH_RESULTS_DIR)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset root (default $MTRL_BENCH_DATA_DIR or ~/.cache/mtrl-bench)")
    parser.add_argument("--wandb", choices=["offline", "online"], default=None)
    parser.add_argument("--force", action="store_true",
                        help="redo a finished (or diverged) run from the start")
    parser.add_argument("--regenerate-data", action="store_true",
                        help="regenerate the suite's dataset files even where they exist")
    parser.add_argument("--no-progress", action="store_true")


def _flags(args: argparse.Namespace) -> dict:
    """--suite/--quality/--seed/--data as Run fields (they override the preset's values)."""
    return {field: getattr(args, field) for field in ("suite", "quality", "seed", "data")
            if getattr(args, field) is not None}


def plan_from_argv(argv: list[str]) -> tuple[RunPlan, argparse.Namespace]:
    """The plan of ``mtrl-bench run ARGV`` without running it (what a sweep checks)."""
    parser = argparse.ArgumentParser(prog="mtrl-bench run")
    configure_parser(parser)
    args = parser.parse_args(argv)
    plan = plan_run(args.method, args.preset, args.gin_file, args.gin_binding, args.results_dir,
                    args.device, _flags(args))
    return plan, args


def run_command(args: argparse.Namespace) -> int:
    run(args.method, args.preset, gin_files=args.gin_file, bindings=args.gin_binding,
        flags=_flags(args),
        device=args.device, results=args.results_dir, data_dir=args.data_dir, force=args.force,
        wandb_mode=args.wandb, progress=not args.no_progress,
        regenerate_data=args.regenerate_data)
    return 0
