"""Offline datasets: generation from Meta-World's scripted experts, storage, validation, loading.

Qualities (SPEC "Datasets"; the ladder itself is defined in ``mtrl_bench.datagen``):

- ``near-optimal`` with ``N`` episodes: episodes 0..N-1 of a ladder of ``N`` episodes, i.e. the
  whole ladder from fully random to the expert with small noise.
- ``sub-optimal`` with ``N`` episodes: episodes 0..N-1 of a ladder of ``2N`` episodes, i.e. the
  noisier first half of the ladder that ``near-optimal`` with ``2N`` episodes walks. It is
  bit-identical to the first half of that dataset (the paper's sub-optimal data is the first
  half of each near-optimal replay buffer: 1000 of 2000 episodes).

Storage: one file per (quality, task, settings),
``<data_dir>/<quality>/<task>__ep<N>_seed<S>_len<L>.npz`` written with ``np.savez_compressed``
(about 50 bytes per step on MT5). Arrays, one row per episode: ``observations`` (N, L, 39) float32
(the observation before each action), ``actions`` (N, L, 4) float32 in [-1, 1] (exactly what
the env received), ``rewards`` (N, L) float32, ``successes`` (N, L) bool (``info["success"]``
after each step), ``goal_index`` (N,) int64, ``epsilon`` and ``sigma`` (N,) float32, plus
``meta``: a JSON string with the settings (task, quality, episodes, seed, episode length,
generator version), the schedule, the goal construction and the library versions. Settings are
both in the name (different settings never collide) and in ``meta`` (checked on load; the
library versions are recorded, not enforced). Files are written to a temporary name in the same
folder and renamed into place, so a file that exists is complete; an interrupted run leaves
only whole finished tasks, and the next run skips them and redoes the rest. Temporary files of
processes that no longer run are deleted at the next generation.

The HarmoDT/MTDiff layout (``<root>/<task>/<i>.npz``, one episode per file) loads into the same
``TaskDataset``. It has no success flags, goal indices or noise levels: successes come from an
optional ``success`` array when a file has one, otherwise they are all False and
``meta["success_known"]`` is False (nothing is inferred from rewards); ``goal_index`` is -1 and
``epsilon``/``sigma`` are NaN.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtrl_bench import datagen
from mtrl_bench.errors import DatasetError, UserError
from mtrl_bench.io import fsync_path
from mtrl_bench.prompts import DEFAULT_NUM_DEMONSTRATIONS, demonstration_indices
from mtrl_bench.suites import GOAL_SEED, MT50, NUM_GOALS, normalize_task_name, resolve_tasks

QUALITIES = ("near-optimal", "sub-optimal")
GENERATOR_VERSION = 1
DEFAULT_EPISODES = 100
DATA_DIR_ENV = "MTRL_BENCH_DATA_DIR"
_CHUNK_EPISODES = 25  # at most this many episodes per worker job (progress, load balance)
_FILE_RE = re.compile(r"^(?P<task>[a-z0-9-]+)__ep(?P<episodes>\d+)_seed(?P<seed>\d+)"
                      r"_len(?P<length>\d+)\.npz$")
_TMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp$")
_FLOAT_ARRAYS = ("observations", "actions", "rewards", "epsilon", "sigma")


@dataclass
class TaskDataset:
    """All episodes of one task; every episode has the same length."""

    task: str
    observations: np.ndarray  # (E, T, 39) float32
    actions: np.ndarray  # (E, T, 4) float32 in [-1, 1]
    rewards: np.ndarray  # (E, T) float32
    successes: np.ndarray  # (E, T) bool
    goal_index: np.ndarray  # (E,) int64, 0..49 (-1: unknown, HarmoDT data)
    epsilon: np.ndarray  # (E,) float32 (NaN: unknown, HarmoDT data)
    sigma: np.ndarray  # (E,) float32 (NaN: unknown, HarmoDT data)
    meta: dict = field(default_factory=dict)
    #: the last ``prompt_episodes`` episodes are held-out demonstrations: prompts only, never
    #: trained on (HarmoDT keeps 2 per task); 0: demonstrations are chosen among all episodes
    prompt_episodes: int = 0

    @property
    def num_episodes(self) -> int:
        return int(self.observations.shape[0])

    def training(self) -> TaskDataset:
        """The episodes that are trained on (all but the held-out prompt episodes)."""
        if not self.prompt_episodes:
            return self
        keep = slice(0, self.num_episodes - self.prompt_episodes)
        return TaskDataset(self.task, self.observations[keep], self.actions[keep],
                           self.rewards[keep], self.successes[keep], self.goal_index[keep],
                           self.epsilon[keep], self.sigma[keep], self.meta)

    def demonstration_indices(self, count: int = DEFAULT_NUM_DEMONSTRATIONS) -> np.ndarray:
        """Episodes prompts come from, best first: the held-out ones (by return) when there
        are any, else the best successful episodes (:func:`prompts.demonstration_indices`)."""
        if self.prompt_episodes:
            held_out = np.arange(self.num_episodes - self.prompt_episodes, self.num_episodes)
            return held_out[np.argsort(-self.returns[held_out], kind="stable")][:count]
        return demonstration_indices(self.returns, self.episode_success, count)

    @property
    def episode_length(self) -> int:
        return int(self.observations.shape[1])

    @property
    def returns(self) -> np.ndarray:
        return self.rewards.sum(1)

    @property
    def episode_success(self) -> np.ndarray:
        return self.successes.any(1)


def default_data_dir() -> Path:
    """``$MTRL_BENCH_DATA_DIR`` or a per-user cache folder."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtrl-bench" / "data"


def dataset_path(data_dir: Path, task: str, quality: str, episodes: int, seed: int,
                 episode_length: int) -> Path:
    return Path(data_dir) / quality / f"{task}__ep{episodes}_seed{seed}_len{episode_length}.npz"


def ladder_episodes(quality: str, episodes: int) -> int:
    """Length of the ladder a dataset of that quality and size is the start of."""
    return episodes if quality == "near-optimal" else 2 * episodes


def _check_quality(quality: str) -> str:
    if quality not in QUALITIES:
        raise UserError(f"unknown quality {quality!r}; valid: {', '.join(QUALITIES)}")
    return quality


def check_sizes(episodes: int | None, seed: int, episode_length: int) -> None:
    if episodes is not None and episodes < 1:
        raise UserError(f"episodes must be at least 1, got {episodes}")
    if seed < 0:
        raise UserError(f"seed must be non-negative, got {seed}")
    if not 1 <= episode_length <= datagen.MAX_EPISODE_LENGTH:
        raise UserError(f"episode length must be between 1 and {datagen.MAX_EPISODE_LENGTH} "
                        f"(Meta-World truncates there), got {episode_length}")


def _settings(task: str, quality: str, episodes: int, seed: int, episode_length: int) -> dict:
    return dict(task=task, quality=quality, episodes=episodes, seed=seed,
                episode_length=episode_length, generator_version=GENERATOR_VERSION)


def _make_meta(settings: dict) -> dict:
    from importlib.metadata import version

    from mtrl_bench import __version__

    ladder = ladder_episodes(settings["quality"], settings["episodes"])
    return dict(
        format="mtrl-bench episodes",
        settings=settings,
        schedule=dict(
            ladder_episodes=ladder,
            epsilon=f"max(0, 1 - k / ({datagen.EPSILON_DECAY_FRACTION} * {ladder}))",
            sigma=f"{datagen.SIGMA_MIN} + {datagen.SIGMA_SPAN} * (1 - k / {ladder})",
            action="uniform(-1, 1) with probability epsilon, else clip(expert + N(0, sigma^2))",
            expert="metaworld.policies.ENV_POLICY_MAP[task]",
            episode_seed="np.random.default_rng([seed, crc32(task), k])",
        ),
        goals=f"metaworld.MT1(task, seed={GOAL_SEED}).train_tasks[k % {NUM_GOALS}]",
        versions=dict(mtrl_bench=__version__, metaworld=version("metaworld"),
                      mujoco=version("mujoco"), numpy=np.__version__),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _read_npz(path: Path, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """The named arrays of an npz file; any failure to read it is a DatasetError."""
    if not path.is_file():
        raise DatasetError(f"{path}: file does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in names if name not in npz.files]
            if missing:
                raise DatasetError(f"{path}: missing arrays {', '.join(missing)}")
            return {name: npz[name] for name in names + optional if name in npz.files}
    except DatasetError:
        raise
    except Exception as err:  # zipfile/zlib/npy-header errors all mean a damaged file
        raise DatasetError(f"{path}: truncated or corrupt file ({_one_line(err)})") from None


def _read_meta(path: Path) -> dict:
    raw = _read_npz(path, ("meta",))["meta"]
    try:
        meta = json.loads(str(raw[()]))
        meta["settings"]["task"]  # noqa: B018 (probe the structure)
    except Exception as err:
        raise DatasetError(f"{path}: unreadable meta data ({_one_line(err)})") from None
    return meta


def _settings_mismatch(meta: dict, expected: dict) -> str | None:
    found = meta["settings"]
    wrong = [f"{key}={found.get(key)!r} in the file but {value!r} asked"
             for key, value in expected.items() if found.get(key) != value]
    return "; ".join(wrong) or None


def _validate(arrays: dict, episodes: int, length: int, source: Path, *, generated: bool) -> None:
    """Shapes, dtypes, finiteness and ranges; DatasetError naming ``source`` otherwise."""
    expected = dict(
        observations=(np.float32, (episodes, length, datagen.OBS_DIM)),
        actions=(np.float32, (episodes, length, datagen.ACTION_DIM)),
        rewards=(np.float32, (episodes, length)),
        successes=(np.bool_, (episodes, length)),
        goal_index=(np.int64, (episodes,)),
        epsilon=(np.float32, (episodes,)),
        sigma=(np.float32, (episodes,)),
    )
    for name, (dtype, shape) in expected.items():
        array = arrays[name]
        if array.shape != shape:
            raise DatasetError(f"{source}: {name} has shape {array.shape}, expected {shape}")
        if array.dtype != dtype:
            raise DatasetError(f"{source}: {name} has dtype {array.dtype}, expected "
                               f"{np.dtype(dtype)}")
    for name in _FLOAT_ARRAYS if generated else _FLOAT_ARRAYS[:3]:
        bad = ~np.isfinite(arrays[name])
        if bad.any():
            episode = int(np.argwhere(bad)[0][0])
            raise DatasetError(f"{source}: {name} has {int(bad.sum())} NaN/inf values "
                               f"(first in episode {episode})")
    if np.abs(arrays["actions"]).max(initial=0.0) > 1.0:
        raise DatasetError(f"{source}: actions outside [-1, 1]")
    low = 0 if generated else -1
    if not np.all((arrays["goal_index"] >= low) & (arrays["goal_index"] < NUM_GOALS)):
        raise DatasetError(f"{source}: goal_index outside {low}..{NUM_GOALS - 1}")


def _load_file(path: Path, expected: dict) -> TaskDataset:
    """Load one generated file and check it against the settings that were asked for."""
    meta = _read_meta(path)
    mismatch = _settings_mismatch(meta, expected)
    if mismatch:
        raise DatasetError(f"{path}: settings do not match: {mismatch}")
    arrays = _read_npz(path, ("observations", "actions", "rewards", "successes", "goal_index",
                              "epsilon", "sigma"))
    _validate(arrays, expected["episodes"], expected["episode_length"], path, generated=True)
    meta["file"] = str(path)
    return TaskDataset(task=expected["task"], meta=meta, **arrays)


def _find_files(data_dir: Path, quality: str) -> list[tuple[dict, Path]]:
    """(settings parsed from the name, path) of every dataset file of a quality."""
    folder = Path(data_dir) / quality
    found = []
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else ():
        match = _FILE_RE.match(path.name)
        if match:
            found.append((_settings(match["task"], quality, int(match["episodes"]),
                                    int(match["seed"]), int(match["length"])), path))
    return found


def _resolve_file(data_dir: Path, task: str, quality: str, episodes: int | None, seed: int,
                  episode_length: int) -> tuple[dict, Path]:
    if episodes is not None:
        return (_settings(task, quality, episodes, seed, episode_length),
                dataset_path(data_dir, task, quality, episodes, seed, episode_length))
    candidates = [(s, p) for s, p in _find_files(data_dir, quality) if s["task"] == task
                  and s["seed"] == seed and s["episode_length"] == episode_length]
    if len(candidates) == 1:
        return candidates[0]
    where = dataset_path(data_dir, task, quality, 0, seed, episode_length).parent
    if not candidates:
        raise DatasetError(f"missing dataset: no {quality} file for {task} with seed {seed} and "
                           f"episode length {episode_length} in {where}")
    sizes = ", ".join(str(s["episodes"]) for s, _ in candidates)
    raise DatasetError(f"several {quality} datasets for {task} in {where} (episodes: {sizes}); "
                       f"say which with episodes")


def _missing_hint(data_dir: Path, task: str, quality: str) -> str:
    others = [p.name for s, p in _find_files(data_dir, quality) if s["task"] == task]
    return f" (other settings present: {', '.join(others)})" if others else ""


def load_suite_dataset(tasks: list[str], quality: str, *, data_dir=None,
                       episodes: int | None = None, seed: int = 0,
                       episode_length: int = datagen.MAX_EPISODE_LENGTH,
                       ) -> dict[str, TaskDataset]:
    """Load and validate every task's dataset; ``episodes=None`` takes the only size present."""
    _check_quality(quality)
    check_sizes(episodes, seed, episode_length)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    datasets = {}
    for task in dict.fromkeys(normalize_task_name(t) for t in tasks):
        expected, path = _resolve_file(data_dir, task, quality, episodes, seed, episode_length)
        if not path.is_file():
            raise DatasetError(f"missing dataset for {task}: {path} does not exist"
                               f"{_missing_hint(data_dir, task, quality)}; generate it with "
                               f"`mtrl-bench data`")
        try:
            datasets[task] = _load_file(path, expected)
        except DatasetError as err:
            raise DatasetError(f"{err}; " + regenerate_hint(task, quality, expected["episodes"],
                                                            seed, episode_length)) from None
    return datasets


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(folder: Path) -> None:
    """Delete temporary files left by generators that were killed before renaming them."""
    for path in folder.glob(".*.tmp"):
        match = _TMP_RE.match(path.name)
        if match and not _pid_running(int(match["pid"])):
            path.unlink(missing_ok=True)


def _write_atomic(path: Path, arrays: dict, meta: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stale_reason(path: Path, settings: dict) -> str | None:
    """None when ``path`` is a finished file made with ``settings``, else why not (only the
    meta is read here; the arrays are validated when loaded)."""
    if not path.is_file():
        return "missing"
    try:
        mismatch = _settings_mismatch(_read_meta(path), settings)
    except DatasetError as err:
        return str(err)
    return f"{path}: made with other settings: {mismatch}" if mismatch else None


def default_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def chunk_jobs(tasks: list[str], quality: str, episodes: int, seed: int,
               episode_length: int, workers: int) -> list[datagen.ChunkJob]:
    """Task-major jobs, so that tasks finish (and are written) one after another; about four
    per worker and task so that tasks of different speed still keep all workers busy."""
    size = max(1, min(_CHUNK_EPISODES, math.ceil(episodes / (4 * workers))))
    ladder = ladder_episodes(quality, episodes)
    return [datagen.ChunkJob(task, seed, ladder, episode_length, start,
                             min(start + size, episodes))
            for task in tasks for start in range(0, episodes, size)]


def _run_jobs(jobs: list[datagen.ChunkJob], workers: int, stack: contextlib.ExitStack):
    """Results of the jobs as they finish: in this process for one worker, else in a pool of
    spawned processes (MuJoCo state is not fork-safe; spawn also works on macOS)."""
    if workers == 1:
        return map(datagen.generate_chunk, jobs)
    import multiprocessing

    pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
        workers, initializer=datagen.init_worker))
    return pool.imap_unordered(datagen.generate_chunk, jobs)


#: bytes a generated step takes: in memory while a task's file is assembled (observation 39
#: and action 4 float32, reward float32, success bool; twice, for the concatenation), and
#: on disk, compressed (measured on MT5, rounded up)
MEMORY_BYTES_PER_STEP = 2 * (39 * 4 + 4 * 4 + 4 + 1)
DISK_BYTES_PER_STEP = 60


def check_size(tasks: list[str], episodes: int, episode_length: int, folder: Path) -> None:
    """Refuse a dataset that cannot fit, saying how much it would need, before any work."""
    steps = episodes * episode_length
    memory, disk = steps * MEMORY_BYTES_PER_STEP, len(tasks) * steps * DISK_BYTES_PER_STEP
    available = _available_memory()
    if available is not None and memory > available:
        raise UserError(f"{episodes} episodes of {episode_length} steps need about "
                        f"{_gb(memory)} of memory per task while generating; this machine has "
                        f"{_gb(available)} available")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if disk > free:
        raise UserError(f"{len(tasks)} task(s) x {episodes} episodes of {episode_length} steps "
                        f"need about {_gb(disk)} on disk; {probe} has {_gb(free)} free")


def _available_memory() -> int | None:
    """Memory available for a new allocation (MemAvailable: free plus reclaimable cache)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_data_dir(data_dir) -> Path:
    """The data folder (default if None), refused at once if it cannot be one: a path
    through a regular file, or an existing folder this process cannot read."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"data dir {folder} cannot be created: {probe} is not a folder")
    if folder.exists() and not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"data dir {folder} cannot be read")
    return folder


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def regenerate_hint(task: str, quality: str, episodes: int, seed: int,
                    episode_length: int) -> str:
    return (f"regenerate it with `mtrl-bench data --tasks {task} --quality {quality} "
            f"--episodes {episodes} --seed {seed} --episode-length {episode_length} --force` "
            "(or rerun with --regenerate-data)")


def generate_suite_dataset(tasks: list[str], quality: str, *, data_dir=None, episodes: int,
                           seed: int = 0, episode_length: int = datagen.MAX_EPISODE_LENGTH,
                           workers: int | None = None, progress: bool = True,
                           force: bool = False) -> dict[str, Path]:
    """Generate every task not already generated with these settings; returns the file paths.

    A file that exists but cannot be read or was made with other settings is never replaced
    silently: it is an error naming it, unless ``force`` asks for regeneration. Missing
    tasks are generated, which is always said (on stderr), progress bar or not.
    """
    from tqdm import tqdm

    _check_quality(quality)
    check_sizes(episodes, seed, episode_length)
    if workers is not None and workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    tasks = list(dict.fromkeys(normalize_task_name(t) for t in tasks))
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = data_dir / quality
    settings = {t: _settings(t, quality, episodes, seed, episode_length) for t in tasks}
    paths = {t: dataset_path(data_dir, t, quality, episodes, seed, episode_length)
             for t in tasks}
    reasons = {t: _stale_reason(paths[t], settings[t]) for t in tasks}
    todo = [t for t in tasks if reasons[t] or force]
    damaged = [t for t in tasks if reasons[t] not in (None, "missing")]
    if damaged and not force:
        task = damaged[0]
        more = f" (and {len(damaged) - 1} more task(s))" if len(damaged) > 1 else ""
        raise DatasetError(f"{reasons[task]}{more}; "
                           + regenerate_hint(task, quality, episodes, seed, episode_length))
    if not todo:
        return paths
    check_size(todo, episodes, episode_length, folder)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(folder)
    for task in todo:
        if reasons[task] not in (None, "missing"):
            print(f"regenerating {task} (asked for): {reasons[task]}", file=sys.stderr)
    done = len(tasks) - len(todo)
    print(f"generating {len(todo)} {quality} task dataset(s) ({episodes} episodes of "
          f"{episode_length} steps) in {folder}"
          + (f"; {done} already there" if done else ""), file=sys.stderr)
    workers = workers or default_workers()
    jobs = chunk_jobs(todo, quality, episodes, seed, episode_length, workers)
    pending: dict[str, list[dict]] = {t: [] for t in todo}
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(todo) * episodes, unit="ep", desc=quality,
                                       disable=not progress, dynamic_ncols=True))
        for chunk in _run_jobs(jobs, min(workers, len(jobs)), stack):
            task = chunk["task"]
            pending[task].append(chunk)
            bar.update(len(chunk["epsilon"]))
            if sum(len(c["epsilon"]) for c in pending[task]) == episodes:
                chunks = sorted(pending.pop(task), key=lambda c: c["start"])
                arrays = {name: np.concatenate([c[name] for c in chunks])
                          for name in chunks[0] if name not in ("task", "start")}
                _write_atomic(paths[task], arrays, _make_meta(settings[task]))
    return paths


def ensure_suite_dataset(tasks: list[str], quality: str, *, data_dir=None, episodes: int,
                         seed: int = 0, episode_length: int = datagen.MAX_EPISODE_LENGTH,
                         workers: int | None = None, progress: bool = True,
                         force: bool = False) -> dict[str, TaskDataset]:
    """Generate what is missing (or everything, with ``force``), then load and validate."""
    generate_suite_dataset(tasks, quality, data_dir=data_dir, episodes=episodes, seed=seed,
                           episode_length=episode_length, workers=workers, progress=progress,
                           force=force)
    return load_suite_dataset(tasks, quality, data_dir=data_dir, episodes=episodes, seed=seed,
                              episode_length=episode_length)


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
        raw = _read_npz(path, ("observations", "actions", "rewards"), optional=("success",))
        length = raw["observations"].shape[0] if raw["observations"].ndim else 0
        shapes = dict(observations=(length, datagen.OBS_DIM), actions=(length, datagen.ACTION_DIM))
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
    _validate(arrays, count, length, folder, generated=False)
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


def load_harmodt_dataset(root, tasks: list[str]) -> dict[str, TaskDataset]:
    """Load ``<root>/<task>/<i>.npz`` episodes (task folders named -v2 or -v3)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: HarmoDT data root does not exist")
    datasets = {}
    for task in dict.fromkeys(normalize_task_name(t) for t in tasks):
        datasets[task] = _load_harmodt_task(_harmodt_task_dir(root, task), task)
    return datasets


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
    _check_quality(quality)
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
    cache_path = Path.home() / ".cache" / "mtrl-bench" / "file-hashes.json"
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


# ----------------------------------------------------------------------------- command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Generate per-task datasets from Meta-World's scripted experts with a replay-like "
        "noise ladder, or (--check) validate stored datasets and print a per-task table. "
        "near-optimal with N episodes walks the whole ladder (random to expert); sub-optimal "
        "with N episodes is the first, noisier half of a 2N-episode ladder.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--suite", help="suite name: mt5, mt10, mt30, mt50 or random-K:SEED")
    which.add_argument("--tasks", nargs="+", metavar="TASK", help="explicit task names")
    parser.add_argument("--quality", metavar="{" + ",".join(QUALITIES) + "}",
                        help="dataset quality (required to generate; --check shows all if absent)")
    parser.add_argument("--episodes", type=int,
                        help=f"episodes per task (generation default {DEFAULT_EPISODES}; "
                             f"--check: any)")
    parser.add_argument("--seed", type=int, help="generation seed (default 0; --check: any)")
    parser.add_argument("--episode-length", type=int,
                        help=f"steps per episode (default {datagen.MAX_EPISODE_LENGTH}; "
                             f"--check: any)")
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


def _summary_row(label: str, dataset: TaskDataset, seed) -> dict:
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


def _print_table(rows: list[dict]) -> None:
    from tabulate import tabulate

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["quality"], row["episodes"], row["length"], row["seed"]),
                          []).append(row)
    table = []
    for group in groups.values():
        table += group + ([_mean_row(group)] if len(group) > 1 else [])
    print(tabulate(table, headers="keys", floatfmt=".1f"))


def _stray_files(data_dir: Path, qualities: list[str], tasks: list[str] | None) -> list[str]:
    """Dataset files no task of the suite (or no Meta-World task at all) uses."""
    lines = []
    for quality in qualities:
        for settings, path in _find_files(data_dir, quality):
            if settings["task"] not in MT50:
                lines.append(f"{path}: unknown task {settings['task']!r} (not a Meta-World "
                             "MT50 task)")
            elif tasks is not None and settings["task"] not in tasks:
                lines.append(f"{path}: {settings['task']} is not a task of this suite")
    return lines


def _check_generated(args: argparse.Namespace, data_dir: Path) -> list[dict]:
    tasks = resolve_tasks(args.suite, args.tasks) if args.suite or args.tasks else None
    qualities = [_check_quality(args.quality)] if args.quality else list(QUALITIES)
    asked = dict(episodes=args.episodes, seed=args.seed, episode_length=args.episode_length)
    rows = []
    for quality in qualities:
        found = [(s, p) for s, p in _find_files(data_dir, quality)
                 if all(v is None or s[k] == v for k, v in asked.items())
                 and (tasks is None or s["task"] in tasks)]
        if tasks is not None and (found or args.quality):
            have = {s["task"] for s, _ in found}
            missing = [t for t in tasks if t not in have]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise DatasetError(f"missing {quality} dataset for {missing[0]}{more} in "
                                   f"{data_dir / quality}"
                                   f"{_missing_hint(data_dir, missing[0], quality)}")
        order = tasks or MT50
        found.sort(key=lambda item: order.index(item[0]["task"]) if item[0]["task"] in order
                   else len(order))
        for settings, path in found:
            if settings["task"] in MT50:
                rows.append(_summary_row(quality, _load_file(path, settings), settings["seed"]))
    if not rows:
        raise DatasetError(f"no datasets in {data_dir} match the given suite/tasks/settings")
    return rows


def run_command(args: argparse.Namespace) -> int:
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    if args.harmodt_root is not None:
        root = Path(args.harmodt_root).expanduser().resolve()
        layout = [q for q in QUALITIES if (root / q).is_dir()]
        tasks = (resolve_tasks(args.suite, args.tasks) if args.suite or args.tasks
                 else harmodt_tasks(root / layout[0] if layout else root))
        rows = []
        for quality in [args.quality] if args.quality else list(QUALITIES):
            suite = plan_external_suite(root, tasks, _check_quality(quality), strict=False)
            for ds in suite.load().values():
                held_out = ds.returns[ds.num_episodes - ds.prompt_episodes:]
                rows.append({**_summary_row(f"{quality} ({suite.split})", ds.training(), "-"),
                             "prompts": ds.prompt_episodes,
                             "prompt return": float(held_out.mean()) if held_out.size
                             else "n/a (too few episodes for run)"})
        print(f"HarmoDT-layout data: {root} (what `run --data harmodt:{root}` trains on; the "
              f"last {HARMODT_PROMPT_EPISODES} episodes of each near-optimal buffer are "
              "prompts, not trained on)")
        _print_table(rows)
        return 0
    if args.check:
        print(f"data dir: {data_dir}")
        _print_table(_check_generated(args, data_dir))
        tasks = resolve_tasks(args.suite, args.tasks) if args.suite or args.tasks else None
        qualities = [args.quality] if args.quality else list(QUALITIES)
        stray = _stray_files(data_dir, qualities, tasks)
        for line in stray:
            print(f"not checked: {line}")
        return 0
    tasks = resolve_tasks(args.suite, args.tasks)
    if args.quality is None:
        raise UserError(f"give --quality ({' or '.join(QUALITIES)}) to generate a dataset")
    quality = _check_quality(args.quality)
    episodes = args.episodes if args.episodes is not None else DEFAULT_EPISODES
    seed = args.seed if args.seed is not None else 0
    length = (args.episode_length if args.episode_length is not None
              else datagen.MAX_EPISODE_LENGTH)
    paths = generate_suite_dataset(tasks, quality, data_dir=data_dir, episodes=episodes,
                                   seed=seed, episode_length=length, workers=args.workers,
                                   progress=not args.no_progress, force=args.force)
    print(f"{len(paths)} {quality} task files in {data_dir / quality}")
    settings = {t: _settings(t, quality, episodes, seed, length) for t in paths}
    _print_table([_summary_row(quality, _load_file(p, settings[t]), seed)
                  for t, p in paths.items()])
    return 0
