"""A run's plan: every argument of every object the run builds, resolved from its gin
configuration (:mod:`mtrl_bench.config`) before anything runs, and from those its identity
and cell. Where its run directory is, the runner says (``runs.runner.run_dir_of``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mtrl_bench.bindings import resolve_arguments
from mtrl_bench.config import (
    GENERATED_ONLY,
    RunConfig,
    built_objects,
    check_run_config,
    default_method_identity,
    parent_gin_name,
    parse_gin,
    runner_set_of,
    unused_parameters_of,
)
from mtrl_bench.errors import UserError
from mtrl_bench.identity import build_identity, cell_id, describe_difference
from mtrl_bench.io import read_json


@dataclass
class RunPlan:
    """One configured run: what it trains on, the arguments of everything it builds, its
    identity and, from that, its directory."""

    cfg: RunConfig
    tasks: list[str]
    method: str
    arguments: dict[str, dict]  # gin name -> resolved keyword arguments
    identity: dict  # see mtrl_bench.identity
    results: str | None  # the results folder asked for (None: the default one)
    external: object | None = None  # data.external.ExternalSuite when the data are not generated
    #: the method part of the identity of a plain run of the method (its files and code
    #: defaults): recorded with the run so tables label its variants without this code
    default_method_identity: dict | None = None

    @property
    def cell(self) -> str:
        return cell_id(self.identity)

    def check_reusable(self, path: Path, what: str) -> None:
        """Refuse to skip to, or resume, a run directory whose identity is not this one's
        (a directory is named by its identity, so this only trips on copied folders)."""
        recorded = read_json(path / "meta.json").get("identity")
        if recorded != self.identity:
            difference = (describe_difference(recorded, self.identity) if recorded
                          else "it records no identity")
            raise UserError(f"{path} holds {what} of another run ({difference}); use "
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
    check_run_config(cfg)
    tasks = resolve_suite(cfg.suite)
    cfg.suite = canonical_suite_name(cfg.suite)
    root = external_root(cfg.data)
    if root is not None:
        cfg.data = f"harmodt:{root}"  # one spelling per folder
    check_quality(cfg.quality)
    torch_device = resolve_device(device)
    n = len(tasks)
    objects = built_objects(method)
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
                                            parent_gin_name(method) if name == own else None)
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
    return RunPlan(cfg, tasks, method, arguments, identity, results, external, default)


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
    runner_set, unused = runner_set_of(plan.method), unused_parameters_of(plan.method)
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
