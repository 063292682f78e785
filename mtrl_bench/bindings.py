"""Gin bindings: the arguments a configurable will be built with (code default <- binding
<- value the runner derives), and whether a binding the user added takes effect.

The identity those arguments make is :mod:`mtrl_bench.identity`, which needs no gin.
"""

from __future__ import annotations

import inspect
import re

import gin

from mtrl_bench.errors import UserError
from mtrl_bench.identity import json_value


def parameters(target) -> list[inspect.Parameter]:
    """Keyword parameters of a class's constructor (or a function), following ``**kwargs``
    up the class hierarchy so a subclass that forwards them shows its parents' too."""
    found: dict[str, inspect.Parameter] = {}
    classes = list(inspect.getmro(target)) if inspect.isclass(target) else [target]
    for owner in classes:
        init = owner.__init__ if inspect.isclass(owner) else owner
        if owner is object or (inspect.isclass(owner) and "__init__" not in vars(owner)
                               and owner is not target):
            continue
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            break
        forwards = False
        for p in signature.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                found.setdefault(p.name, p)
        if not forwards:
            break
    return list(found.values())


def resolve_arguments(target, gin_name: str, derived: dict | None = None,
                      skip: tuple[str, ...] = (), inherit: str | None = None) -> dict:
    """Every keyword argument of ``target`` as it will be passed: ``derived`` (set by the
    runner) wins over the gin binding of ``gin_name``, which wins over the binding of
    ``inherit`` (an ablation's parent: ``socodt.alpha`` changes every ablation of socodt
    that has ``alpha``), which wins over the code default.

    Parameters in ``skip`` (objects the runner passes, such as datasets) are left out.
    """
    derived = derived or {}
    own = {p.name for p in parameters(target)}
    bound = {k: v for k, v in (gin.get_bindings(inherit) if inherit else {}).items()
             if k in own}
    bound.update(gin.get_bindings(gin_name))
    resolved = {}
    for p in parameters(target):
        if p.name in skip:
            continue
        if p.name in derived:
            resolved[p.name] = derived[p.name]
        elif p.name in bound:
            resolved[p.name] = bound[p.name]
        elif p.default is not p.empty:
            resolved[p.name] = p.default
        else:
            raise TypeError(f"{gin_name}.{p.name} has no default and is not set by the runner")
    unknown = sorted(set(bound) - {p.name for p in parameters(target)})
    if unknown:
        from mtrl_bench.errors import UserError

        raise UserError(f"{gin_name} has no parameter {unknown[0]!r}; valid: "
                        + ", ".join(p.name for p in parameters(target) if p.name not in skip))
    declared = {p.name: p for p in parameters(target)}
    out = {}
    for name, value in resolved.items():
        value = _as_declared(declared[name], value)
        if name not in derived:
            _check_type(f"{gin_name}.{name}", declared[name], value)
        out[name] = json_value(value)
    return out


_SIMPLE_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}


def _declared_types(param: inspect.Parameter) -> set[type] | None:
    """The simple types a parameter accepts (from its annotation, else its default's type);
    None when that is not a union of int/float/bool/str/None (then nothing is checked)."""
    annotation = param.annotation
    if annotation is param.empty:
        if param.default is None or param.default is param.empty:
            return None
        return {type(param.default)}
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    names = [n.strip() for n in str(text).split("|")]
    if not all(n in _SIMPLE_TYPES for n in names):
        return None
    return {_SIMPLE_TYPES[n] for n in names}


def _as_declared(param: inspect.Parameter, value):
    """An int given for a float parameter becomes that float, so that ``beta_min = 5`` and
    ``beta_min = 5.0`` are one setting (and one identity hash)."""
    types = _declared_types(param) or set()
    if float in types and int not in types and type(value) is int:
        return float(value)
    return value


def _check_type(name: str, param: inspect.Parameter, value) -> None:
    """Gin accepts any literal: a wrongly typed value is refused before any work starts."""

    types = _declared_types(param)
    if types is not None and type(value) not in types:
        expected = " or ".join(sorted(t.__name__ for t in types)).replace("NoneType", "None")
        raise UserError(f"{name} must be {expected}, got {value!r}")


def binding_entries() -> dict[str, str]:
    """Every parsed gin binding as {"[scope/]Selector.param" or "MACRO": raw value text}."""
    entries: list[list[str]] = []
    for line in gin.config_str().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace() and entries:  # continuation of a multi-line value
            entries[-1][1] += " " + line.strip()
        elif " = " in line:
            entries.append(line.split(" = ", 1))
    return {key.strip(): " ".join(value.split()) for key, value in entries}


_MACRO = re.compile(r"%([A-Za-z_][\w./]*)")


def ineffective_bindings(before: dict[str, str], after: dict[str, str],
                         built: dict[str, set[str]], runner_set: dict[str, dict[str, str]],
                         unused: dict[str, dict[str, str]] | None = None,
                         inherited: dict[str, str] | None = None) -> list[str]:
    """Why each binding the user added or changed (``after`` vs ``before``, both from
    :func:`binding_entries`) would not take effect; empty when all do.

    ``built``: gin name -> parameters of every configurable this run constructs;
    ``runner_set``: gin name -> {parameter: what sets it instead}; ``unused``: gin name ->
    {parameter: why the object ignores it}; ``inherited``: gin name of a parent whose
    bindings the run's method reads (see :func:`resolve_arguments`) -> the method's gin
    name (the parent's entries in the other arguments are the method's).
    """
    unused = unused or {}
    for parent, child in (inherited or {}).items():
        built = {**built, parent: built[child]}
        runner_set = {**runner_set, parent: runner_set.get(child, {})}
        unused = {**unused, parent: unused.get(child, {})}
    def configurable(key: str) -> tuple[str, str, str]:
        selector, param = key.rsplit(".", 1)
        scope, _, name = selector.rpartition("/")
        return scope, name.rsplit(".", 1)[-1], param

    effective = {k for k in after if "." in k and not configurable(k)[0]
                 and configurable(k)[1] in built
                 and configurable(k)[2] not in unused.get(configurable(k)[1], {})}
    read_macros: set[str] = set()
    pending = [after[k] for k in effective]
    while pending:
        for macro in _MACRO.findall(pending.pop()):
            if macro not in read_macros:
                read_macros.add(macro)
                if macro in after:
                    pending.append(after[macro])
    problems = []
    for key in sorted(k for k in after if before.get(k) != after[k]):
        if "." not in key:
            if key not in read_macros:
                problems.append(f"{key} has no effect: no parameter of this run reads it "
                                f"(the method's gin file binds the macros it uses)")
            continue
        scope, name, param = configurable(key)
        if scope:
            problems.append(f"{key} has no effect: runs enter no gin scope ({scope!r}); "
                            f"bind {name}.{param}")
        elif name not in built:
            problems.append(f"{key} has no effect: this run builds only "
                            f"{', '.join(sorted(built))}")
        elif param in runner_set.get(name, {}):
            problems.append(f"{key} has no effect: the runner sets it "
                            f"({runner_set[name][param]})")
        elif param in unused.get(name, {}):
            problems.append(f"{key} has no effect: {unused[name][param]}")
        elif param not in built[name]:
            reader = (f"{inherited[name]} (which reads the {name}.* bindings of its own "
                      "parameters)" if name in (inherited or {}) else name)
            problems.append(f"{key} has no effect: {reader} has no parameter {param!r}; "
                            f"valid: {', '.join(sorted(built[name]))}")
    return problems
