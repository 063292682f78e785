"""What ``mtrl-bench data`` shows: one summary row per task dataset (generated or in the
HarmoDT/MTDiff layout), validated on the way, and the files no suite task uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtrl_bench.data.dataset import (
    QUALITIES,
    TaskDataset,
    check_quality,
    find_files,
    load_file,
    missing_hint,
)
from mtrl_bench.data.external import harmodt_tasks, plan_external_suite
from mtrl_bench.errors import DatasetError
from mtrl_bench.suites import MT50


def summary_row(label: str, dataset: TaskDataset, seed) -> dict:
    known = dataset.meta.get("success_known", True)
    returns = dataset.returns
    return {
        "quality": label, "task": dataset.task, "episodes": dataset.num_episodes,
        "length": dataset.episode_length, "seed": seed,
        "transitions": dataset.num_episodes * dataset.episode_length,
        "success %": 100.0 * float(dataset.episode_success.mean()) if known else "n/a",
        "mean return": float(returns.mean()), "min return": float(returns.min()),
        "max return": float(returns.max()),
    }


def _mean_row(rows: list[dict]) -> dict:
    row = {key: "" for key in rows[0]}
    row.update(quality=rows[0]["quality"], task=f"mean of {len(rows)} tasks")
    for key in ("success %", "mean return"):
        values = [r[key] for r in rows if not isinstance(r[key], str)]
        row[key] = float(np.mean(values)) if len(values) == len(rows) else "n/a"
    return row


def format_rows(rows: list[dict]) -> str:
    """The rows as a text table, with a mean row under each group of equal settings."""
    from tabulate import tabulate

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["quality"], row["episodes"], row["length"], row["seed"]),
                          []).append(row)
    table = []
    for group in groups.values():
        table += group + ([_mean_row(group)] if len(group) > 1 else [])
    return tabulate(table, headers="keys", floatfmt=".1f")


def generated_rows(data_dir: Path, tasks: list[str] | None, quality: str | None,
                   episodes: int | None, seed: int | None,
                   episode_length: int | None) -> list[dict]:
    """Validate and summarise the generated files matching what was given (None: any);
    DatasetError if a task of ``tasks`` has none, or nothing matches at all."""
    qualities = [check_quality(quality)] if quality else list(QUALITIES)
    asked = dict(episodes=episodes, seed=seed, episode_length=episode_length)
    rows = []
    for each in qualities:
        found = [(s, p) for s, p in find_files(data_dir, each)
                 if all(v is None or s[k] == v for k, v in asked.items())
                 and (tasks is None or s["task"] in tasks)]
        if tasks is not None and (found or quality):
            have = {s["task"] for s, _ in found}
            missing = [t for t in tasks if t not in have]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise DatasetError(f"missing {each} dataset for {missing[0]}{more} in "
                                   f"{data_dir / each}"
                                   f"{missing_hint(data_dir, missing[0], each)}")
        order = tasks or MT50
        found.sort(key=lambda item: order.index(item[0]["task"]) if item[0]["task"] in order
                   else len(order))
        for settings, path in found:
            if settings["task"] in MT50:
                rows.append(summary_row(each, load_file(path, settings), settings["seed"]))
    if not rows:
        raise DatasetError(f"no datasets in {data_dir} match the given suite/tasks/settings")
    return rows


def stray_files(data_dir: Path, quality: str | None, tasks: list[str] | None) -> list[str]:
    """Dataset files no task of the suite (or no Meta-World task at all) uses."""
    lines = []
    for each in [quality] if quality else list(QUALITIES):
        for settings, path in find_files(data_dir, each):
            if settings["task"] not in MT50:
                lines.append(f"{path}: unknown task {settings['task']!r} (not a Meta-World "
                             "MT50 task)")
            elif tasks is not None and settings["task"] not in tasks:
                lines.append(f"{path}: {settings['task']} is not a task of this suite")
    return lines


def harmodt_rows(root: Path, tasks: list[str] | None, quality: str | None) -> list[dict]:
    """Summaries of what ``run --data harmodt:ROOT`` would train on, per quality, with the
    held-out prompt episodes; a task too short for prompts is shown whole, not refused."""
    layout = [q for q in QUALITIES if (root / q).is_dir()]
    tasks = tasks or harmodt_tasks(root / layout[0] if layout else root)
    rows = []
    for each in [quality] if quality else list(QUALITIES):
        suite = plan_external_suite(root, tasks, check_quality(each), strict=False)
        for dataset in suite.load().values():
            held_out = dataset.returns[dataset.num_episodes - dataset.prompt_episodes:]
            rows.append({**summary_row(f"{each} ({suite.split})", dataset.training(), "-"),
                         "prompts": dataset.prompt_episodes,
                         "prompt return": float(held_out.mean()) if held_out.size
                         else "n/a (too few episodes for run)"})
    return rows
