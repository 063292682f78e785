"""Thin command-line front end: each subcommand lives in the module that does the work.

A command module provides ``configure_parser(parser)`` and ``run_command(args) -> int``.
Modules are imported when the parser is built, so they must import heavy dependencies
(torch, metaworld) lazily inside their functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mtrl_bench.errors import UserError

# subcommand -> (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "suites": ("mtrl_bench.suites", "list task suites and their tasks"),
    "data": ("mtrl_bench.data", "generate, check or inspect offline datasets"),
    "methods": ("mtrl_bench.methods_cmd", "list the registered methods and their roles"),
    "run": ("mtrl_bench.runner", "train and evaluate one method on one suite (resumable)"),
    "sweep": ("mtrl_bench.sweep", "run a grid of methods x suites x qualities x seeds"),
    "table": ("mtrl_bench.tables", "paper-style tables (Markdown, CSV, LaTeX) from results/runs"),
    "plot": ("mtrl_bench.plots", "learning curves, mask sparsity, beta and conflict figures"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtrl-bench",
        description="Offline multi-task RL benchmark on Meta-World (Prompt-DT, HarmoDT, SoCo-DT).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure_parser(command_parser)
        command_parser.set_defaults(_run=module.run_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        # gin appends "In call to configurable ..." lines to exceptions it passes through
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"mtrl-bench {args.command}: error: {message}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except OSError as err:  # read-only folder, full disk, a path under a file ...
        where = f": {err.filename}" if err.filename else ""
        print(f"mtrl-bench {args.command}: error: {err.strerror or err}{where}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mtrl-bench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
