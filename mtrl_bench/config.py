"""A run's gin configuration: the package's gin files and presets, the ``Run`` settings,
parsing the user's files and bindings, and the check that every binding takes effect. The
plan made from it is :mod:`mtrl_bench.plan`, the request :mod:`mtrl_bench.request`.

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
from mtrl_bench.identity import RUNNER_SET
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
    binding of the same field; the package's own files are exempt from that check (they
    are the baseline a user's binding is compared with)."""
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


def built_objects(method: str) -> dict[str, type]:
    """Gin name -> class of every configurable a run of ``method`` constructs."""
    from mtrl_bench.evaluation.evaluator import Evaluator
    from mtrl_bench.method import get_method_class, gin_name
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

    return {"Run": RunConfig, "PromptDTConfig": PromptDTConfig, "Trainer": Trainer,
            "Evaluator": Evaluator, gin_name(method): get_method_class(method)}


def runner_set_of(method: str) -> dict[str, dict[str, str]]:
    from mtrl_bench.method import gin_name

    return {gin_name(method) if owner == "method" else owner: params
            for owner, params in RUNNER_SET.items()}


def parent_gin_name(method: str) -> str | None:
    """The gin name whose bindings an ablation also reads (its parent's), else None."""
    from mtrl_bench.method import gin_name, method_role, registered_methods

    parent = method_role(method).ablation_of
    return gin_name(parent) if parent in registered_methods() else None


def _inherited(method: str) -> dict[str, str]:
    from mtrl_bench.method import gin_name

    parent = parent_gin_name(method)
    return {parent: gin_name(method)} if parent else {}


def unused_parameters_of(method: str) -> dict[str, dict[str, str]]:
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
             for name, cls in built_objects(method).items()}
    unused = unused_parameters_of(method)
    data = gin.get_bindings("Run").get("data", RunConfig.data)
    if isinstance(data, str) and data != "generated" and external_root(data) is not None:
        unused["Run"] = {field: f"it describes generated data; this run reads {data}"
                         for field in GENERATED_ONLY}
    problems = ineffective_bindings(before, after, built, runner_set_of(method), unused,
                                    _inherited(method))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def check_run_config(cfg: RunConfig) -> None:
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
