"""A run's configuration: gin files and presets, the ``Run`` settings, a run request (what
``mtrl-bench run`` asks for, as typed values) and its plan: every argument of every object
the run builds, resolved before anything runs, and from that its identity and directory.

Budgets are stated in the paper's units (sequences seen, HarmoDT iterations of 8
sequences) and converted to steps of the batched trainer for the suite at hand, so a
preset means the same protocol on MT5 and MT50: HarmoDT trains 1M iterations x 8
sequences = 8M sequences, updates masks every 500 iterations (4000 sequences) and warms
up over 10k iterations (80k sequences).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import gin

from mtrl_bench.bindings import (
    binding_entries,
    ineffective_bindings,
    parameters,
    resolve_arguments,
)
from mtrl_bench.errors import UserError
from mtrl_bench.identity import RUNNER_SET, build_identity, cell_id, describe_difference
from mtrl_bench.io import read_json
from mtrl_bench.runs.rundir import run_dir
from mtrl_bench.suites import MAX_EPISODE_STEPS

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
    episode_length: int = MAX_EPISODE_STEPS  # generated data: steps per episode
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
    eval_max_steps: int = MAX_EPISODE_STEPS  # steps per evaluation episode
    checkpoint_every_steps: int = 1000

    def steps(self, sequences: int, num_tasks: int) -> int:
        return max(1, round(sequences / (num_tasks * self.batch_size)))


def parse_gin(method: str, preset: str, gin_files: list[str], bindings: list[str],
              overrides: dict | None = None) -> None:
    """base.gin, then the preset, the method's file, the user's files and bindings, then
    ``overrides``: ``Run`` fields given directly (``--suite`` etc.: {field: value}).

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
    override_bindings = [f"Run.{field} = {value!r}"
                         for field, value in (overrides or {}).items()]
    try:
        parse_gin_files(files)
        package = binding_entries()
        parse_gin_files(files + user_files, bindings)
        user = binding_entries()
        for field, value in (overrides or {}).items():
            key = f"Run.{field}"
            if key in user and user[key] != package.get(key) and user[key] != repr(value):
                raise UserError(f"--{field} {value} and the binding {key} = {user[key]} "
                                "disagree; give one of them")
        if override_bindings:
            parse_gin_files(files + user_files, list(bindings) + override_bindings)
    except (ValueError, SyntaxError, KeyError, TypeError, NameError) as err:
        raise UserError(f"bad gin configuration: {_gin_error_text(err)}") from err
    check_bindings_take_effect(method, package, binding_entries())


def _gin_error_text(err: Exception) -> str:
    """Gin's parse error in one line, without the Python objects it embeds (ast's "malformed
    node or string on line 1: <ast.Name object at 0x...>" for a bare word): what is left
    names the token, and a bare word gets the likely cause."""
    message = re.sub(r"malformed node or string[^<]*<ast\.\w+ object at 0x[0-9a-f]+>\s*", "",
                     str(err))
    message = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "(value)", message)
    message = " ".join(message.split())
    token = re.search(r"Failed to parse token '([A-Za-z_]\w*)'", message)
    if token:
        message += (f"; write a string in quotes (\"{token.group(1)}\") and a reference to "
                    f"a configurable with @ (@{token.group(1)})")
    return message


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


def bindable_parameters(method: str) -> list[tuple[str, object]]:
    """(gin name, code default) of each parameter of ``method`` a user may bind: not those
    the runner sets (``RUNNER_SET``) or the method ignores."""
    from mtrl_bench.method import get_method_class, gin_name

    method_class = get_method_class(method)
    return [(f"{gin_name(method)}.{p.name}", p.default) for p in parameters(method_class)
            if p.name not in RUNNER_SET["method"]
            and p.name not in method_class.unused_parameters]


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
    import mtrl_bench.evaluation.evaluator  # noqa: F401  (Evaluator)
    import mtrl_bench.training.trainer  # noqa: F401  (Trainer, PromptDTConfig)
    from mtrl_bench.method import registered_methods

    registered_methods()


class _DropGinPathNotFound(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")


def _built_objects(method: str) -> dict[str, type]:
    """Gin name -> class of every configurable a run of ``method`` constructs."""
    from mtrl_bench.evaluation.evaluator import Evaluator
    from mtrl_bench.method import get_method_class, gin_name
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

    return {"Run": RunConfig, "PromptDTConfig": PromptDTConfig, "Trainer": Trainer,
            "Evaluator": Evaluator, gin_name(method): get_method_class(method)}


def _runner_set(method: str) -> dict[str, dict[str, str]]:
    from mtrl_bench.method import gin_name

    return {gin_name(method) if owner == "method" else owner: params
            for owner, params in RUNNER_SET.items()}


def _parent_gin_name(method: str) -> str | None:
    """The gin name whose bindings an ablation also reads (its parent's), else None."""
    from mtrl_bench.method import gin_name, method_role, registered_methods

    parent = method_role(method).ablation_of
    return gin_name(parent) if parent in registered_methods() else None


def _inherited(method: str) -> dict[str, str]:
    from mtrl_bench.method import gin_name

    parent = _parent_gin_name(method)
    return {parent: gin_name(method)} if parent else {}


def _unused(method: str) -> dict[str, dict[str, str]]:
    """{gin name: {parameter: why}} of the parameters the method accepts but ignores."""
    from mtrl_bench.method import get_method_class, gin_name

    unused = get_method_class(method).unused_parameters
    return {gin_name(method): {p: f"{method} does not use it ({why})"
                               for p, why in unused.items()}}


def check_bindings_take_effect(method: str, before: dict[str, str],
                               after: dict[str, str]) -> None:
    """A binding the user added that this run would ignore is an error, not a no-op."""
    from mtrl_bench.data.external import external_root

    built = {name: {p.name for p in parameters(cls)}
             for name, cls in _built_objects(method).items()}
    unused = _unused(method)
    data = gin.get_bindings("Run").get("data", RunConfig.data)
    if isinstance(data, str) and data != "generated" and external_root(data) is not None:
        unused["Run"] = {field: f"it describes generated data; this run reads {data}"
                         for field in GENERATED_ONLY}
    problems = ineffective_bindings(before, after, built, _runner_set(method), unused,
                                    _inherited(method))
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
    from mtrl_bench.data.external import HARMODT_TARGET_RETURN

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
    external: object | None = None  # data.external.ExternalSuite when the data are not generated
    #: the method part of the identity of a plain run of the method (its files and code
    #: defaults): recorded with the run so tables label its variants without this code
    default_method_identity: dict | None = None

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
             results=None, device: str = "auto", overrides: dict | None = None) -> RunPlan:
    """Parse the configuration of one run and resolve every argument of every object it
    will build (gin is global: one run per process)."""
    from mtrl_bench.data.dataset import GENERATOR_VERSION, check_quality
    from mtrl_bench.data.external import external_root, plan_external_suite
    from mtrl_bench.method import get_method_class, gin_name
    from mtrl_bench.suites import canonical_suite_name, resolve_suite
    from mtrl_bench.training.trainer import resolve_device

    method_class = get_method_class(method)
    default = default_method_identity(method)  # before the run's own configuration is parsed
    parse_gin(method, preset, list(gin_files), list(bindings), overrides)
    cfg = RunConfig()
    _check_run_config(cfg)
    tasks = resolve_suite(cfg.suite)
    cfg.suite = canonical_suite_name(cfg.suite)
    root = external_root(cfg.data)
    if root is not None:
        cfg.data = f"harmodt:{root}"  # one spelling per folder
    check_quality(cfg.quality)
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
                                            skip.get(name, ()),
                                            _parent_gin_name(method) if name == own else None)
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
    return RunPlan(cfg, tasks, method, arguments, identity, path, external, default)


@dataclass(frozen=True)
class RunRequest:
    """One ``mtrl-bench run``: what to run (method, preset, gin files and bindings, the
    ``Run`` values that override the preset's, device, results folder) and how to carry it
    out (data folder, force, regenerate, wandb, progress bars: never part of its identity)."""

    method: str
    preset: str = "paper"
    gin_files: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()
    suite: str | None = None
    quality: str | None = None
    seed: int | None = None
    data: str | None = None
    device: str = "auto"
    threads: int | None = None  # torch threads and evaluation workers (default: torch's)
    results_dir: str | None = None
    data_dir: str | None = None
    force: bool = False
    overwrite_committed: bool = False
    regenerate_data: bool = False
    wandb: str | None = None
    progress: bool = True

    def overrides(self) -> dict:
        """The ``Run`` fields given directly (they override the preset's values)."""
        return {name: getattr(self, name) for name in ("suite", "quality", "seed", "data")
                if getattr(self, name) is not None}

    def plan(self) -> RunPlan:
        return plan_run(self.method, self.preset, self.gin_files, self.bindings,
                        self.results_dir, self.device, self.overrides())

    def command_args(self) -> list[str]:
        """The arguments of ``mtrl-bench run`` that make this request (a sweep runs each
        run as a process of its own; tests check the CLI parses them back to ``self``)."""
        args = ["--method", self.method, "--preset", self.preset]
        for name in ("suite", "quality", "seed", "data"):
            if getattr(self, name) is not None:
                args += [f"--{name}", str(getattr(self, name))]
        args += [arg for path in self.gin_files for arg in ("--gin-file", path)]
        args += [arg for binding in self.bindings for arg in ("--gin-binding", binding)]
        args += ["--device", self.device]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        for flag, value in (("--results-dir", self.results_dir),
                            ("--data-dir", self.data_dir), ("--wandb", self.wandb)):
            if value is not None:
                args += [flag, str(value)]
        switches = (("--force", self.force), ("--overwrite-committed", self.overwrite_committed),
                    ("--regenerate-data", self.regenerate_data),
                    ("--no-progress", not self.progress))
        return args + [flag for flag, on in switches if on]


def _check_arguments(method: str, tasks: list[str], arguments: dict[str, dict],
                     generated: bool = True) -> None:
    """Everything checkable about the objects a run will build, checked before any data is
    generated or any step trained: the cheap ones are built and thrown away."""
    from mtrl_bench.data.dataset import check_sizes
    from mtrl_bench.evaluation.evaluator import Evaluator
    from mtrl_bench.method import build_method, gin_name
    from mtrl_bench.suites import ACTION_DIM, OBS_DIM
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

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
        except UserError as err:  # already one line, less what gin appends to it
            message = str(err).split("In call to configurable")[0]
            raise UserError(" ".join(message.split())) from None
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


