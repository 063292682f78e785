"""`mtrl-bench methods`: list the registered methods, their roles and parameters."""

from __future__ import annotations

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", action="store_true",
                        help="also list each method's gin-configurable parameters and defaults")


def method_rows() -> list[tuple[str, str, str, str]]:
    """(method key, gin name, role, one-line description) for every registered method."""
    from mtrl_bench.method import describe, gin_name, method_role, registered_methods

    rows = []
    for name, cls in registered_methods().items():
        role = method_role(name)
        text = role.role + (f" of {role.ablation_of}" if role.ablation_of else "")
        rows.append((name, gin_name(name), text, describe(cls)))
    return rows


def run_command(args: argparse.Namespace) -> int:
    from mtrl_bench.identity import parameters
    from mtrl_bench.method import registered_methods
    from mtrl_bench.runner import RUNNER_SET

    methods = registered_methods()
    rows = method_rows()
    width = max(len(name) for name, _, _, _ in rows)
    role_width = max(len(role) for _, _, role, _ in rows)
    for name, gin, role, description in rows:
        print(f"{name:<{width}}  {role:<{role_width}}  {description}")
        if args.params:
            unused = methods[name].unused_parameters
            for p in parameters(methods[name]):
                if p.name not in RUNNER_SET["method"] and p.name not in unused:
                    print(f"{'':<{width}}    {gin}.{p.name} = {p.default!r}")
    return 0
