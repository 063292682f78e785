"""The ``mtrl-bench`` command line: argument parsing and dispatch only.

Each subcommand is a ``configure_*`` function that declares its arguments and a ``*_command``
function that turns them into typed arguments of one library call and prints what it
returns. Nothing below this module parses arguments. Library modules are imported inside the
command functions, so ``--help`` and one-line errors come fast, without torch or Meta-World.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtrl_bench.errors import UserError

# ----------------------------------------------------------------------------- suites


def configure_suites(parser: argparse.ArgumentParser) -> None:
    from mtrl_bench.suites import suite_names_help

    parser.add_argument("names", nargs="*", help=f"suites to show (default: all fixed). "
                        f"Valid: {suite_names_help()}")


def suites_command(args: argparse.Namespace) -> int:
    from mtrl_bench.suites import FIXED_SUITES, resolve_suite

    for name in args.names or list(FIXED_SUITES):
        tasks = resolve_suite(name)
        print(f"{name} ({len(tasks)} tasks): {' '.join(tasks)}")
    return 0


# ----------------------------------------------------------------------------- data


def configure_data(parser: argparse.ArgumentParser) -> None:
    from mtrl_bench.data.dataset import DATA_DIR_ENV, DEFAULT_EPISODES, QUALITIES
    from mtrl_bench.suites import MAX_EPISODE_STEPS, suite_names_help

    parser.description = (
        "Generate per-task datasets from Meta-World's scripted experts with a replay-like "
        "noise ladder, or (--check) validate stored datasets and print a per-task table. "
        "near-optimal with N episodes walks the whole ladder (random to expert); sub-optimal "
        "with N episodes is the first, noisier half of a 2N-episode ladder.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--suite", help=f"suite name: {suite_names_help()}")
    which.add_argument("--tasks", nargs="+", metavar="TASK", help="explicit task names")
    parser.add_argument("--quality", metavar="{" + ",".join(QUALITIES) + "}",
                        help="dataset quality (required to generate; --check shows all if absent)")
    parser.add_argument("--episodes", type=int,
                        help=f"episodes per task (generation default {DEFAULT_EPISODES}; "
                             "--check: any)")
    parser.add_argument("--seed", type=int, help="generation seed (default 0; --check: any)")
    parser.add_argument("--episode-length", type=int,
                        help=f"steps per episode (default {MAX_EPISODE_STEPS}; --check: any)")
    parser.add_argument("--workers", type=int,
                        help="generation processes (default: the usable CPU cores)")
    parser.add_argument("--data-dir", type=Path,
                        help=f"data folder (default ${DATA_DIR_ENV} or ~/.cache/mtrl-bench/data)")
    parser.add_argument("--check", "--info", action="store_true",
                        help="validate stored datasets and print a per-task table")
    parser.add_argument("--harmodt-root", type=Path, metavar="DIR",
                        help="check a HarmoDT/MTDiff-layout folder <DIR>/<task>/<i>.npz instead")
    parser.add_argument("--force", action="store_true",
                        help="regenerate the tasks' files even where they exist (a file that "
                             "does not match or cannot be read is otherwise an error)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def data_command(args: argparse.Namespace) -> int:
    from mtrl_bench.data import report
    from mtrl_bench.data.dataset import DEFAULT_EPISODES, QUALITIES, default_data_dir
    from mtrl_bench.data.external import HARMODT_PROMPT_EPISODES
    from mtrl_bench.data.generation import generate_suite_dataset
    from mtrl_bench.suites import MAX_EPISODE_STEPS, resolve_tasks

    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    tasks = resolve_tasks(args.suite, args.tasks) if args.suite or args.tasks else None
    if args.harmodt_root is not None:
        root = Path(args.harmodt_root).expanduser().resolve()
        rows = report.harmodt_rows(root, tasks, args.quality)
        print(f"HarmoDT-layout data: {root} (what `run --data harmodt:{root}` trains on; the "
              f"last {HARMODT_PROMPT_EPISODES} episodes of each near-optimal buffer are "
              "prompts, not trained on)")
        print(report.format_rows(rows))
        return 0
    if args.check:
        print(f"data dir: {data_dir}")
        print(report.format_rows(report.generated_rows(
            data_dir, tasks, args.quality, args.episodes, args.seed, args.episode_length)))
        for line in report.stray_files(data_dir, args.quality, tasks):
            print(f"not checked: {line}")
        return 0
    if tasks is None:
        raise UserError("give a suite (--suite) or a task list (--tasks)")
    if args.quality is None:
        raise UserError(f"give --quality ({' or '.join(QUALITIES)}) to generate a dataset")
    episodes = args.episodes if args.episodes is not None else DEFAULT_EPISODES
    seed = args.seed if args.seed is not None else 0
    length = args.episode_length if args.episode_length is not None else MAX_EPISODE_STEPS
    paths = generate_suite_dataset(tasks, args.quality, data_dir=data_dir, episodes=episodes,
                                   seed=seed, episode_length=length, workers=args.workers,
                                   progress=not args.no_progress, force=args.force)
    print(f"{len(paths)} {args.quality} task files in {data_dir / args.quality}")
    print(report.format_rows(report.generated_rows(data_dir, list(paths), args.quality,
                                                   episodes, seed, length)))
    return 0


# ----------------------------------------------------------------------------- methods


def configure_methods(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", action="store_true",
                        help="also list each method's gin-configurable parameters and defaults")


def methods_command(args: argparse.Namespace) -> int:
    from mtrl_bench.config import bindable_parameters
    from mtrl_bench.method import method_summaries

    rows = method_summaries()
    width = max(len(name) for name, _, _ in rows)
    role_width = max(len(role) for _, role, _ in rows)
    for name, role, description in rows:
        print(f"{name:<{width}}  {role:<{role_width}}  {description}")
        if args.params:
            for binding, default in bindable_parameters(name):
                print(f"{'':<{width}}    {binding} = {default!r}")
    return 0


# ----------------------------------------------------------------------------- run


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """What every run of ``run`` and of ``sweep ... --`` takes besides its grid point."""
    from mtrl_bench.config import PRESETS
    from mtrl_bench.data.dataset import DATA_DIR_ENV
    from mtrl_bench.runs.rundir import RESULTS_DIR_ENV

    parser.add_argument("--data", metavar="SOURCE",
                        help="generated (default) or harmodt:DIR, the paper's own data in the "
                             "HarmoDT/MTDiff layout <DIR>/[<quality>/]<task>/<i>.npz")
    parser.add_argument("--preset", default="paper", help=f"one of {', '.join(PRESETS)} "
                        "(default: paper, the SoCo-DT/HarmoDT protocol)")
    # dopamine spells these with underscores; the dashed spellings match every other flag
    parser.add_argument("--gin-file", "--gin_file", dest="gin_file", action="append",
                        default=[], metavar="FILE", help="extra .gin file (repeatable)")
    parser.add_argument("--gin-binding", "--gin_binding", dest="gin_binding", action="append",
                        default=[], metavar="BINDING",
                        help="a gin binding, e.g. 'Trainer.learning_rate = 3e-4' (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="torch threads for training and evaluation workers (default: "
                             "torch's, the usable cores; recorded in the run's numerics)")
    parser.add_argument("--results-dir", default=None,
                        help=f"results root (default ${RESULTS_DIR_ENV} or "
                             "~/.local/share/mtrl-bench/results; the repository's committed "
                             "runs are read with --results-dir results)")
    parser.add_argument("--data-dir", default=None,
                        help=f"dataset root (default ${DATA_DIR_ENV} or "
                             "~/.cache/mtrl-bench/data)")
    parser.add_argument("--wandb", choices=["offline", "online"], default=None,
                        help="mirror metrics to Weights & Biases (optional; the run "
                             "directory's files stay the source of truth)")
    parser.add_argument("--force", action="store_true",
                        help="redo a finished (or diverged) run from the start")
    parser.add_argument("--overwrite-committed", action="store_true",
                        help="let --force redo a run whose files are committed to git")
    parser.add_argument("--regenerate-data", action="store_true",
                        help="regenerate the suite's dataset files even where they exist")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (logs stay line by line)")


def configure_run(parser: argparse.ArgumentParser) -> None:
    from mtrl_bench.data.dataset import QUALITIES
    from mtrl_bench.suites import suite_names_help

    parser.epilog = ("exit status: 0 done (or already finished), 2 bad input or I/O error, "
                     "3 diverged (non-finite loss), 75 the run directory is locked by another "
                     "process, 130 interrupted (the same command resumes)")
    parser.add_argument("--method", required=True, help="see `mtrl-bench methods`")
    parser.add_argument("--suite", help=f"{suite_names_help()} (default: the preset's)")
    parser.add_argument("--quality", metavar="{" + ",".join(QUALITIES) + "}",
                        help="dataset quality (default: the preset's)")
    parser.add_argument("--seed", type=int, help="training seed (default: the preset's, 0 in "
                        "every preset)")
    _add_run_options(parser)


def run_request(args: argparse.Namespace, **given):
    """The :class:`~mtrl_bench.request.RunRequest` of parsed ``run`` arguments (``given``:
    fields the caller sets instead, as a sweep does for method, suite, quality and seed)."""
    from mtrl_bench.request import RunRequest

    fields = dict(preset=args.preset, gin_files=tuple(args.gin_file),
                  bindings=tuple(args.gin_binding), data=args.data, device=args.device,
                  threads=args.threads, results_dir=args.results_dir,
                  data_dir=args.data_dir, force=args.force,
                  overwrite_committed=args.overwrite_committed,
                  regenerate_data=args.regenerate_data, wandb=args.wandb,
                  progress=not args.no_progress)
    for name in ("method", "suite", "quality", "seed"):
        if name in vars(args):
            fields[name] = getattr(args, name)
    return RunRequest(**{**fields, **given})


def run_command(args: argparse.Namespace) -> int:
    from mtrl_bench.runs.runner import run

    run(run_request(args))
    return 0


# ----------------------------------------------------------------------------- sweep


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def configure_sweep(parser: argparse.ArgumentParser) -> None:
    from mtrl_bench.data.dataset import QUALITIES
    from mtrl_bench.runs.rundir import RESULTS_DIR_ENV
    from mtrl_bench.suites import suite_names_help

    parser.epilog = ("exit status: 0 every run succeeded (or was finished), 1 some run failed, "
                     "2 bad input")
    parser.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                        help="methods to run (see `mtrl-bench methods`)")
    parser.add_argument("--suites", nargs="+", required=True, metavar="SUITE",
                        help=f"suites: {suite_names_help()}")
    parser.add_argument("--qualities", nargs="+", default=["near-optimal"],
                        metavar="{" + ",".join(QUALITIES) + "}",
                        help="dataset qualities (default: near-optimal)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED",
                        help="training seeds, each its own run (default: 0)")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                        help="a gin binding or macro and its values, each value its own cell "
                             "(repeatable: the product); applied to the methods it affects, "
                             "e.g. 'socodt.beta_min=1,5,10'")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: runs as processes here, --parallel at a time; ray: each "
                             "run a Ray task (pip install 'mtrl-bench[ray]')")
    parser.add_argument("--parallel", type=_positive, default=None,
                        help="local executor: runs at a time (default: one per GPU, else 1); "
                             "on a CPU each run gets max(1, cores / N) threads unless "
                             "--threads is given after --")
    parser.add_argument("--address", default=None,
                        help="ray executor: cluster address (default: start a local instance)")
    parser.add_argument("--gpus-per-run", type=float, default=None,
                        help="ray executor: GPUs each run asks for (default 1 if CUDA, else 0)")
    parser.add_argument("--results-dir", default=None,
                        help=f"results root of every run (default ${RESULTS_DIR_ENV} or "
                             "~/.local/share/mtrl-bench/results)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("run_args", nargs=argparse.REMAINDER,
                        help="after '--': options for every run, as `mtrl-bench run` takes them "
                             "(not --method/--suite/--quality/--seed: the sweep sets those)")


def _sweep_run_options(run_args: list[str], results_dir: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mtrl-bench sweep ... --", add_help=False)
    _add_run_options(parser)
    options, unknown = parser.parse_known_args([arg for arg in run_args if arg != "--"])
    if unknown:
        sets = {"--method", "--suite", "--quality", "--seed"}
        given = next((arg.split("=")[0] for arg in unknown if arg.split("=")[0] in sets), None)
        if given:
            raise UserError(f"{given} after '--': the sweep sets it; use {given}s")
        raise UserError(f"unknown run option(s) after '--': {' '.join(unknown)}")
    if results_dir is not None:
        if options.results_dir is not None and options.results_dir != results_dir:
            raise UserError("--results-dir given twice with different folders")
        options.results_dir = results_dir
    return options


def sweep_command(args: argparse.Namespace) -> int:
    from mtrl_bench.runs.sweep import build_grid, parse_grid, run_sweep

    common = run_request(_sweep_run_options(args.run_args, args.results_dir), method="")
    specs = build_grid(args.methods, args.suites, args.qualities, args.seeds, common,
                       parse_grid(args.grid))
    return run_sweep(specs, executor=args.executor, parallel=args.parallel,
                     address=args.address, gpus_per_run=args.gpus_per_run,
                     dry_run=args.dry_run)


# ----------------------------------------------------------------------------- table, plot


def _add_results_arguments(parser: argparse.ArgumentParser, output: str) -> None:
    """--results-dir, --runs and --out for commands that read runs and write ``output``."""
    parser.add_argument("--results-dir", default=None,
                        help="results root (default $MTRL_BENCH_RESULTS_DIR or "
                             "~/.local/share/mtrl-bench/results; the repository's committed "
                             "results: --results-dir results)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder of run directories (default: <results-dir>/runs)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write (default: <results-dir>/{output})")


def _results_paths(args: argparse.Namespace, output: str) -> tuple[Path, Path]:
    from mtrl_bench.runs.rundir import results_dir

    root = results_dir(args.results_dir)
    return args.runs or root / "runs", args.out or root / output


def configure_table(parser: argparse.ArgumentParser) -> None:
    from mtrl_bench.analysis.grid import DEFAULT_MIN_SEEDS
    from mtrl_bench.analysis.stats import DEFAULT_RESAMPLES

    _add_results_arguments(parser, "tables")
    parser.add_argument("--metric", choices=("final", "best"), default="final",
                        help="final checkpoint (headline; table1_best is written alongside) "
                             "or best over evaluations for every table")
    parser.add_argument("--baselines", nargs="+", default=None, metavar="METHOD",
                        help="methods (or row labels) that count as baselines (default: the "
                             "methods registered with role='baseline')")
    parser.add_argument("--reference", default=None, metavar="ROW",
                        help="compare every row with this one (default: per column, the best "
                             "baseline with at least 2 seeds)")
    parser.add_argument("--min-seeds", type=int, default=DEFAULT_MIN_SEEDS,
                        help="seeds needed on both sides before an arrow is drawn "
                             "(default: %(default)s)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help="bootstrap resamples of the IQM, optimality-gap, performance-"
                             "profile and P(X > Y) intervals (default: %(default)s)")
    parser.add_argument("--pairwise", nargs="+", default=None, metavar="ROW",
                        help="methods (or row labels) compared pairwise by P(X > Y) (default: "
                             "every method's main variant except ablations)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--paper-reference", type=Path, default=None, metavar="CSV",
                        help="the paper's numbers (default: socodt-paper.csv, installed with "
                             "mtrl_bench.analysis)")


def table_command(args: argparse.Namespace) -> int:
    from mtrl_bench.analysis.grid import TableOptions
    from mtrl_bench.analysis.tables import build_tables

    runs_dir, out = _results_paths(args, "tables")
    options = TableOptions(args.metric, tuple(args.baselines) if args.baselines else None,
                           args.reference, args.min_seeds, args.resamples, args.seed,
                           args.paper_reference,
                           tuple(args.pairwise) if args.pairwise else None)
    markdown, files = build_tables(runs_dir, out, options)
    print(markdown)
    print(f"wrote {len(files)} files to {out}")
    return 0


def configure_plot(parser: argparse.ArgumentParser) -> None:
    _add_results_arguments(parser, "figures")


def plot_command(args: argparse.Namespace) -> int:
    from mtrl_bench.analysis.plots import build_plots

    files, messages, left_out = build_plots(*_results_paths(args, "figures"))
    for message in messages:
        print(message)
    for line in left_out:
        print(f"left out: {line}")
    for path in files:
        print(f"wrote {path}")
    return 0


def configure_compare(parser: argparse.ArgumentParser) -> None:
    from mtrl_bench.analysis.grid import DEFAULT_MIN_SEEDS

    _add_results_arguments(parser, "planned")
    parser.add_argument("--plan", type=Path, required=True,
                        help="TOML file of [[family]] entries (name, pairs of rows, optional "
                             "columns and where = {protocol entry = value}): the comparisons "
                             "an experiment planned, e.g. results/plan.toml")
    parser.add_argument("--metric", choices=("final", "best"), default="final",
                        help="final checkpoint (default) or best over evaluations")
    parser.add_argument("--min-seeds", type=int, default=DEFAULT_MIN_SEEDS,
                        help="seeds needed on both sides before an arrow is drawn "
                             "(default: %(default)s)")


def compare_command(args: argparse.Namespace) -> int:
    from mtrl_bench.analysis.grid import TableOptions
    from mtrl_bench.analysis.planned import build_planned

    runs_dir, out = _results_paths(args, "planned")
    options = TableOptions(args.metric, min_seeds=args.min_seeds)
    markdown, files = build_planned(runs_dir, out, args.plan, options)
    print(markdown)
    print(f"wrote {len(files)} files to {out}")
    return 0


def configure_upgrade_records(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", default=None,
                        help="results root (default $MTRL_BENCH_RESULTS_DIR or "
                             "~/.local/share/mtrl-bench/results)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder of run directories (default: <results-dir>/runs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be added, change nothing")


def upgrade_records_command(args: argparse.Namespace) -> int:
    from mtrl_bench.runs.rundir import results_dir
    from mtrl_bench.runs.upgrade import upgrade_records

    runs_dir = args.runs or results_dir(args.results_dir) / "runs"
    upgrades = upgrade_records(runs_dir, dry_run=args.dry_run)
    done = [u for u in upgrades if u.added]
    for upgrade in upgrades:
        if upgrade.skipped:
            print(f"left as it is: {upgrade.path}: {upgrade.skipped}")
    verb = "would add" if args.dry_run else "added"
    fields = sorted({field for u in done for field in u.added})
    print(f"{verb} {', '.join(fields) or 'nothing'} to {len(done)} run record(s) under "
          f"{runs_dir}")
    return 0


# ----------------------------------------------------------------------------- dispatch

#: subcommand -> (configure, command, one-line help), in the order --help shows them
COMMANDS = {
    "suites": (configure_suites, suites_command, "list task suites and their tasks"),
    "data": (configure_data, data_command, "generate, check or inspect offline datasets"),
    "methods": (configure_methods, methods_command,
                "list the registered methods and their roles"),
    "run": (configure_run, run_command,
            "train and evaluate one method on one suite (resumable)"),
    "sweep": (configure_sweep, sweep_command,
              "run a grid of methods x suites x qualities x seeds"),
    "table": (configure_table, table_command,
              "paper-style tables (Markdown, CSV, LaTeX) from results/runs"),
    "plot": (configure_plot, plot_command,
             "learning curves, mask sparsity, beta and conflict figures"),
    "compare": (configure_compare, compare_command,
                "planned comparisons of named pairs of rows, one BH family per experiment"),
    "upgrade-records": (configure_upgrade_records, upgrade_records_command,
                        "add what tables read to the records of runs made by an older "
                        "mtrl-bench"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtrl-bench",
        description="Offline multi-task RL benchmark on Meta-World (Prompt-DT, HarmoDT, "
                    "SoCo-DT, PCGrad, CAGrad).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (configure, command, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        configure(command_parser)
        command_parser.set_defaults(_run=command)
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
