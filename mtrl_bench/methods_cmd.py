"""`mtrl-bench methods`: list the registered methods (masking strategies)."""

from __future__ import annotations

import argparse
import inspect


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", action="store_true",
                        help="also list each method's gin-configurable parameters and defaults")


def method_rows() -> list[tuple[str, str, str]]:
    """(method key, gin name, one-line description) for every registered strategy."""
    from mtrl_bench.strategy import describe, gin_name, registered_strategies

    return [(name, gin_name(name), describe(cls))
            for name, cls in registered_strategies().items()]


def run_command(args: argparse.Namespace) -> int:
    from mtrl_bench.strategy import registered_strategies

    strategies = registered_strategies()
    rows = method_rows()
    width = max(len(name) for name, _, _ in rows)
    for name, gin, description in rows:
        print(f"{name:<{width}}  {description}")
        if args.params:
            params = inspect.signature(strategies[name].__init__).parameters.values()
            for p in params:
                if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD:
                    print(f"{'':<{width}}    {gin}.{p.name} = {p.default!r}")
    return 0
