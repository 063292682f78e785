"""The paper's own data: the HarmoDT/MTDiff layout (``<root>/<task>/<i>.npz``, one episode per
file) loaded into :class:`mtrl_bench.data.dataset.TaskDataset`, for checking and for training
(``run --data harmodt:DIR``).

It has no success flags, goal indices or noise levels: successes come from an optional
``success`` array when a file has one, otherwise they are all False and
``meta["success_known"]`` is False (nothing is inferred from rewards); ``goal_index`` is -1 and
``epsilon``/``sigma`` are NaN.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtrl_bench.data.dataset import (
    QUALITIES,
    TaskDataset,
    check_quality,
    read_npz,
    validate_arrays,
)
from mtrl_bench.errors import DatasetError, UserError
from mtrl_bench.io import user_cache_dir
from mtrl_bench.suites import ACTION_DIM, OBS_DIM, normalize_task_name


def _harmodt_task_dir(root: Path, task: str) -> Path:
    base = task.removesuffix("-v3")
    dirs = [root / f"{base}-v{v}" for v in (3, 2) if (root / f"{base}-v{v}").is_dir()]
    if not dirs:
        raise DatasetError(f"missing task {task}: neither {root / (base + '-v3')} nor "
                           f"{root / (base + '-v2')} exists")
    if len(dirs) > 1:
        raise DatasetError(f"task {task} is in both {dirs[0]} and {dirs[1]}; keep one")
    return dirs[0]


def _episode_files(folder: Path) -> list[Path]:
    """``<i>.npz`` files of a HarmoDT task folder, by episode index."""
    return sorted((p for p in folder.glob("*.npz") if p.stem.isdigit()), key=lambda p: int(p.stem))


def _load_harmodt_task(folder: Path, task: str, files: list[Path] | None = None,
                       prompt_episodes: int = 0) -> TaskDataset:
    """Episodes of one task (``files``, default all of ``folder``); the last
    ``prompt_episodes`` of them are held-out demonstrations."""
    files = _episode_files(folder) if files is None else files
    if not files:
        raise DatasetError(f"{folder}: no episode files <i>.npz")
    episodes = {name: [] for name in ("observations", "actions", "rewards", "successes")}
    success_known = None
    for path in files:
        raw = read_npz(path, ("observations", "actions", "rewards"), optional=("success",))
        length = raw["observations"].shape[0] if raw["observations"].ndim else 0
        shapes = dict(observations=(length, OBS_DIM), actions=(length, ACTION_DIM))
        for name, shape in shapes.items():
            if raw[name].shape != shape:
                raise DatasetError(f"{path}: {name} has shape {raw[name].shape}, expected {shape}")
        for name in ("rewards", "success"):
            if name in raw:
                if raw[name].shape not in ((length,), (length, 1)):
                    raise DatasetError(f"{path}: {name} has shape {raw[name].shape}, expected "
                                       f"({length}, 1) or ({length},)")
                raw[name] = raw[name].reshape(length)
        if episodes["observations"] and length != episodes["observations"][0].shape[0]:
            raise DatasetError(f"{path}: episode has {length} steps, "
                               f"{files[0].name} has {episodes['observations'][0].shape[0]}")
        if success_known is None:
            success_known = "success" in raw
        elif success_known != ("success" in raw):
            raise DatasetError(f"{path}: only some episode files of {folder} have a 'success' "
                               f"array")
        for name in ("observations", "actions", "rewards"):
            if not np.isfinite(raw[name]).all():
                raise DatasetError(f"{path}: {name} has NaN/inf values")
            episodes[name].append(raw[name].astype(np.float32))
        episodes["successes"].append(raw["success"].astype(bool) if success_known
                                     else np.zeros(length, bool))
    arrays = {name: np.stack(values) for name, values in episodes.items()}
    count, length = arrays["rewards"].shape
    arrays.update(goal_index=np.full(count, -1, np.int64),
                  epsilon=np.full(count, np.nan, np.float32),
                  sigma=np.full(count, np.nan, np.float32))
    validate_arrays(arrays, count, length, folder, generated=False)
    meta = dict(format="harmodt", root=str(folder.parent), task_dir=folder.name, files=count,
                first_file=files[0].name, last_file=files[-1].name, success_known=success_known,
                successes="from the files' 'success' arrays" if success_known else
                "unknown: the HarmoDT layout has no success flags; all set to False",
                goal_index="unknown (-1)", epsilon="unknown (NaN)", sigma="unknown (NaN)")
    return TaskDataset(task=task, meta=meta, prompt_episodes=prompt_episodes, **arrays)


def harmodt_tasks(root) -> list[str]:
    """The -v3 names of the task folders under a HarmoDT root."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: HarmoDT data root does not exist")
    return list(dict.fromkeys(normalize_task_name(p.name) for p in sorted(root.iterdir())
                              if p.is_dir()))


#: HarmoDT keeps episodes 1998-1999 of each task's 2000 as prompts, out of training
HARMODT_PROMPT_EPISODES = 2
#: HarmoDT's evaluation return-to-go target, the same for every task
HARMODT_TARGET_RETURN = 4500.0
DATA_SOURCES = "generated, or harmodt:DIR (the HarmoDT/MTDiff layout)"


def external_root(source: str) -> Path | None:
    """None for generated data, the folder for ``harmodt:DIR``; anything else is refused."""
    if source == "generated":
        return None
    kind, sep, folder = source.partition(":")
    if kind != "harmodt" or not sep or not folder:
        raise UserError(f"unknown data source {source!r}; valid: {DATA_SOURCES}")
    return Path(folder).expanduser().resolve()


@dataclass(frozen=True)
class ExternalSuite:
    """Which files of a HarmoDT-layout folder a run trains on, per task."""

    root: Path
    quality: str
    split: str  # how the quality was found: "folders", "whole buffer" or "first half"
    prompt_episodes: int
    files: dict  # task -> (training episode files, prompt episode files)

    def identity(self) -> dict:
        """What the run's identity records of its data: source, folder, split, episode
        counts and a hash of the content of every file read."""
        every = [p for train, prompts in self.files.values() for p in [*train, *prompts]]
        return {"source": "harmodt", "root": str(self.root), "split": self.split,
                "prompt_episodes": self.prompt_episodes,
                "episodes": {t: len(train) for t, (train, _) in self.files.items()},
                "fingerprint": fingerprint(every, self.root)}

    def load(self) -> dict[str, TaskDataset]:
        out = {}
        for task, (train, prompts) in self.files.items():
            out[task] = _load_harmodt_task(train[0].parent, task, [*train, *prompts],
                                           prompt_episodes=len(prompts))
            out[task].meta.update(split=self.split, quality=self.quality)
        return out


def plan_external_suite(root: Path, tasks: list[str], quality: str,
                        prompt_episodes: int = HARMODT_PROMPT_EPISODES,
                        strict: bool = True) -> ExternalSuite:
    """Resolve a HarmoDT/MTDiff-layout folder for a suite and quality, reading no episode.

    Layouts: ``<root>/<quality>/<task>/<i>.npz`` (one folder per quality; prompts from the
    near-optimal folder), or one buffer ``<root>/<task>/<i>.npz`` of which near-optimal is
    every episode and sub-optimal the first half (the paper's sub-optimal data is the first
    half of each replay buffer). The last ``prompt_episodes`` episodes of the near-optimal
    buffer are prompts and never trained on. Task folders may be named ``-v2`` or ``-v3``.
    With ``strict=False`` (``data --check``) a task with too few episodes for prompts is
    kept whole, without prompts, instead of being an error.
    """
    check_quality(quality)
    tasks = list(dict.fromkeys(normalize_task_name(t) for t in tasks))
    if not root.is_dir():
        raise DatasetError(f"HarmoDT data folder {root} does not exist")
    if (root / quality).is_dir():
        base, split = root / quality, "folders"
        prompt_base = root / "near-optimal" if (root / "near-optimal").is_dir() else base
    elif any((root / q).is_dir() for q in QUALITIES):
        raise DatasetError(f"{root} has quality folders but no {quality}/")
    else:
        base = prompt_base = root
        split = "whole buffer" if quality == "near-optimal" else "first half"
    missing, files = [], {}
    for task in tasks:
        try:
            folder, prompt_folder = _harmodt_task_dir(base, task), _harmodt_task_dir(
                prompt_base, task)
        except DatasetError:
            missing.append(task)
            continue
        episodes, pool = _episode_files(folder), _episode_files(prompt_folder)
        held_out = prompt_episodes
        if len(pool) <= prompt_episodes:
            if strict:
                raise DatasetError(f"{prompt_folder}: {len(pool)} episode files, need more "
                                   f"than {prompt_episodes} (the last {prompt_episodes} are "
                                   "prompts)")
            held_out = 0
        prompts = pool[-held_out:] if held_out else []
        train = [p for p in episodes if p not in prompts]
        if split == "first half":
            train = episodes[: len(episodes) // 2]
        if not train:
            if strict:
                raise DatasetError(f"{folder}: no episode to train on ({len(episodes)} "
                                   f"files, {quality} by the {split})")
            train = episodes
        files[task] = (train, prompts)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(f"{base} lacks {len(missing)} task(s) of the suite: "
                           f"{', '.join(missing[:3])}{more} (folders <task>-v2 or <task>-v3)")
    return ExternalSuite(root, quality, split, prompt_episodes, files)


def fingerprint(paths: list[Path], root: Path) -> str:
    """SHA-256 over the names (relative to ``root``) and contents of ``paths``. Each file's
    hash is cached by (path, size, mtime), so a folder is read in full once, not every time
    a run or sweep is planned; a changed file has another size or mtime and is hashed again."""
    cache_path = user_cache_dir() / "file-hashes.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    total, changed = hashlib.sha256(), False
    for path in sorted(paths):
        stat = path.stat()
        key = str(path)
        entry = cache.get(key)
        if not entry or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            entry = [stat.st_size, stat.st_mtime_ns,
                     hashlib.sha256(path.read_bytes()).hexdigest()]
            cache[key], changed = entry, True
        total.update(f"{path.relative_to(root)}\0{entry[2]}\n".encode())
    if changed:
        try:
            from mtrl_bench.io import atomic_write_text

            atomic_write_text(cache_path, json.dumps(cache))
        except OSError:
            pass  # an unwritable cache only costs time
    return total.hexdigest()[:16]


