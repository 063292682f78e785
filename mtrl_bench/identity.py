"""A run's identity: the values it ran with, not the bindings that were parsed.

Every object a run builds (``Run``, the model config, the trainer, the method, the
evaluator) is constructed with ALL of its arguments passed explicitly, resolved as code
default <- gin binding <- value the runner derives (budgets in steps, the suite's task
count, ...; :mod:`mtrl_bench.bindings`). Those resolved arguments are stored in meta.json;
the identity is the part of them that decides what the run computes, split in two:

- ``protocol``: everything shared by all methods of a comparison (suite and tasks, data,
  budget, model, optimiser, precision, evaluation), as ``"section.param": value``;
- ``method``: the method's name and its own parameters, code defaults included.

The seed and what only changes how a run is carried out (checkpoint interval, logging,
``torch.compile``, evaluation workers) are not part of it. Two runs with equal identities
are replicates (seeds) of one cell; reuse, resume, sweeps, tables and plots all compare
identities, so a binding set to its default, a run made by ``sweep`` instead of ``run``,
and a code default changed between runs are all handled the same way: by value.

A binding that would not take effect (a parameter the runner sets itself, a configurable
this run does not build, a macro nothing reads, a scoped binding) is an error, found by
:func:`mtrl_bench.bindings.ineffective_bindings`. This module needs no gin: tables read
identities from run records with it.
"""

from __future__ import annotations

import hashlib
import json
import math

#: arguments outside the identity: the seed (it makes a replicate, not another cell), the
#: method's name (the identity's "method" part holds it), and what only changes how a run
#: is carried out; bf16 is replaced by the precision it results in on the run's device
OUTSIDE_IDENTITY: dict[str, frozenset[str]] = {
    "Run": frozenset({"seed", "checkpoint_every_steps"}),
    "Trainer": frozenset({"seed", "method", "log_every", "compile", "device", "bf16"}),
    "Evaluator": frozenset({"workers", "max_envs", "overlap"}),
}
#: how identity sections are named after the objects the runner builds
SECTIONS = {"Run": "run", "PromptDTConfig": "model", "Trainer": "trainer",
            "Evaluator": "evaluator"}
#: model-config entries that follow from the method (they belong to its row, not the column)
METHOD_DERIVED_MODEL = frozenset({"conditioning"})


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


def json_value(value):
    """A JSON-safe form of a resolved argument (tuples become lists, others their repr)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return repr(value)


def build_identity(method: str, arguments: dict[str, dict], method_gin_name: str,
                   precision: str, dataset: dict, derived_protocol: dict,
                   unused: set[str] = frozenset()) -> dict:
    """{"protocol": {"section.param": value}, "method": {"name": ..., param: value}}.

    ``arguments`` maps each built object's gin name to its resolved arguments;
    ``derived_protocol`` holds runner-derived values of the method's object (its update
    interval) that follow from the protocol, so they live there and not in the row;
    ``unused`` names method parameters the method ignores (left out).
    """
    protocol: dict = {}
    method_part: dict = {"name": method}
    for owner, args in arguments.items():
        if owner == method_gin_name:
            method_part.update({k: v for k, v in args.items()
                                if k not in derived_protocol and k not in unused})
            continue
        section = SECTIONS[owner]
        for name, value in args.items():
            if name in OUTSIDE_IDENTITY.get(owner, ()):
                continue
            if owner == "PromptDTConfig" and name in METHOD_DERIVED_MODEL:
                method_part[name] = value
            else:
                protocol[f"{section}.{name}"] = value
    protocol["trainer.precision"] = precision
    protocol.update({f"dataset.{k}": json_value(v) for k, v in dataset.items()})
    protocol.update({f"method.{k}": json_value(v) for k, v in derived_protocol.items()})
    return {"protocol": dict(sorted(protocol.items())), "method": method_part}


def digest(obj) -> str:
    """A short stable hash of a JSON-able object (10 hex digits of SHA-256)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def cell_id(identity: dict) -> str:
    """The cell a run belongs to: its whole identity (the seed is not part of it)."""
    return digest(identity)


def protocol_id(identity: dict) -> str:
    return digest(identity["protocol"])


def variant_id(identity: dict) -> str:
    return digest(identity["method"])


def flatten(identity: dict) -> dict:
    """One flat {key: value} dict: protocol keys as they are, method keys as 'method:k'."""
    flat = dict(identity.get("protocol", {}))
    flat.update({f"{identity['method'].get('name', 'method')}.{k}": v
                 for k, v in identity.get("method", {}).items() if k != "name"})
    return flat


def format_value(value) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)


def differences(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every flat key whose value differs ('unset' where absent)."""
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, _UNSET) != new.get(k, _UNSET))
    return [f"{k}: {_show(old, k)} -> {_show(new, k)}" for k in keys]


def describe_difference(old: dict, new: dict, limit: int = 3) -> str:
    """The first ``limit`` differences between two identities, for a one-line message."""
    lines = differences(flatten(old), flatten(new))
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return ", ".join(lines[:limit]) + more


_UNSET = object()


def _show(flat: dict, key: str) -> str:
    return format_value(flat[key]) if key in flat else "unset"


