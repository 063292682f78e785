"""Layout of one run's directory and the append-only metrics log inside it.

``<results>/runs/<suite>/<quality>/<method>/seed<N>/`` (':' in a suite name becomes '_')
holds config.gin, meta.json, metrics.jsonl, final.json and checkpoint.pt. A run is
finished when meta.json says so and final.json exists; both are written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mtrl_bench.io import atomic_write_text, read_json

DEFAULT_RESULTS_DIR = Path("results")


def results_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("MTRL_BENCH_RESULTS_DIR") or DEFAULT_RESULTS_DIR)


def add_results_arguments(parser: argparse.ArgumentParser, output: str) -> None:
    """--results-dir, --runs and --out for commands that read runs and write ``output``."""
    parser.add_argument("--results-dir", default=None,
                        help="results root (default ./results or $MTRL_BENCH_RESULTS_DIR)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder of run directories (default: <results-dir>/runs)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write (default: <results-dir>/{output})")


def results_paths(args: argparse.Namespace, output: str) -> tuple[Path, Path]:
    """(runs folder, output folder) from the arguments of :func:`add_results_arguments`."""
    root = results_dir(args.results_dir)
    return args.runs or root / "runs", args.out or root / output


def run_dir(results: str | os.PathLike | None, suite: str, quality: str, method: str,
            seed: int) -> Path:
    suite_dir = suite.replace(":", "_")
    return results_dir(results) / "runs" / suite_dir / quality / method / f"seed{seed}"


def is_finished(path: Path) -> bool:
    try:
        return (path / "final.json").exists() and read_json(path / "meta.json")["status"] == (
            "finished"
        )
    except (OSError, ValueError, KeyError):
        return False


def settings_difference(old: dict, new: dict, limit: int = 3) -> str:
    """'Run.episodes: 30 -> 2000, ...': the first ``limit`` bindings that differ between two
    meta.json "settings" records ({part: {"Scope.param": value}})."""
    flat_old = {k: v for part in old.values() for k, v in part.items()}
    flat_new = {k: v for part in new.values() for k, v in part.items()}
    keys = sorted(k for k in flat_old.keys() | flat_new.keys()
                  if flat_old.get(k) != flat_new.get(k))
    shown = [f"{k}: {flat_old.get(k, 'unset')} -> {flat_new.get(k, 'unset')}"
             for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


class MetricsLog:
    """metrics.jsonl: one JSON record per line, each with "kind" and "step".

    On resume the log is cut back to the checkpoint's step, so records from work that was
    lost in a crash are replaced by the redone work instead of being duplicated.
    """

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut off by a crash
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def records(self, kind: str | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if kind is None or record.get("kind") == kind:
                out.append(record)
        return out
