"""Episode generation: Meta-World scripted experts corrupted by a replay-like noise ladder.

The first part runs in the worker processes and stays light (metaworld is imported by the
worker on first use); the second part orchestrates: which tasks are missing, jobs over workers,
size checks, atomic writes, resuming. The file format lives in :mod:`mtrl_bench.data.dataset`.

The ladder (metaworld-notes "Quality ladder"), for episode ``k`` of a ladder of ``L`` episodes:

    epsilon_k = max(0, 1 - k / (0.6 L))     probability that a step's action is uniform random
    sigma_k   = 0.1 + 0.4 (1 - k / L)       std of Gaussian noise added to the expert's action

so the first episode is fully random and the last 40% are the expert with small noise.
Episode ``k`` uses goal ``k mod 50`` and its own generator seeded by (seed, task, k), so an
episode does not depend on how episodes are split over workers, and a dataset of ``N``
episodes taken from a ladder of ``L >= N`` is exactly the first ``N`` episodes of that ladder.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtrl_bench.data.dataset import (
    CHUNK_EPISODES,
    TaskDataset,
    check_quality,
    check_sizes,
    dataset_path,
    default_data_dir,
    file_settings,
    ladder_episodes,
    load_suite_dataset,
    read_file_meta,
    regenerate_hint,
    settings_mismatch,
)
from mtrl_bench.errors import DatasetError, UserError
from mtrl_bench.io import atomic_write, nearest_existing, remove_temporary_files
from mtrl_bench.suites import (
    ACTION_DIM,
    GOAL_SEED,
    MAX_EPISODE_STEPS,
    NUM_GOALS,
    OBS_DIM,
    normalize_task_name,
)

EPSILON_DECAY_FRACTION = 0.6
SIGMA_MIN = 0.1
SIGMA_SPAN = 0.4


def ladder(k: np.ndarray, ladder_episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(epsilon, sigma) of episodes ``k`` (array of indices) on a ladder of that many episodes."""
    frac = np.asarray(k, dtype=np.float64) / ladder_episodes
    epsilon = np.maximum(0.0, 1.0 - frac / EPSILON_DECAY_FRACTION)
    sigma = SIGMA_MIN + SIGMA_SPAN * (1.0 - frac)
    return epsilon.astype(np.float32), sigma.astype(np.float32)


def task_key(task: str) -> int:
    """A stable integer per task name for seeding (Python's hash() is salted per process)."""
    return zlib.crc32(task.encode())


@dataclass(frozen=True)
class ChunkJob:
    """Episodes ``start..stop-1`` of one task's ladder; the unit of work sent to a worker."""

    task: str
    seed: int
    ladder_episodes: int
    episode_length: int
    start: int
    stop: int


def init_worker() -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def quiet_experts():
    """The experts warn when their gain exceeds the action range; actions are clipped anyway."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
        yield


@functools.cache
def task_runtime(task: str):
    """One env and expert per task per process; set_task() switches goals (bit-identical to a
    fresh env: tests/test_data.py replays a stored episode in a fresh env)."""
    from metaworld.policies import ENV_POLICY_MAP

    from mtrl_bench.suites import env_class, goal_tasks

    return env_class(task)(), ENV_POLICY_MAP[task](), goal_tasks(task)


def generate_chunk(job: ChunkJob) -> dict:
    """Roll out the job's episodes. Per step only the expert (when not replaced) and env.step
    run in Python; noise, replacement draws and output arrays are prepared per episode."""
    env, policy, goals = task_runtime(job.task)
    n, length = job.stop - job.start, job.episode_length
    ks = np.arange(job.start, job.stop)
    epsilon, sigma = ladder(ks, job.ladder_episodes)
    out = dict(
        task=job.task, start=job.start,
        observations=np.empty((n, length, OBS_DIM), np.float32),
        actions=np.empty((n, length, ACTION_DIM), np.float32),
        rewards=np.empty((n, length), np.float32),
        successes=np.empty((n, length), bool),
        goal_index=(ks % NUM_GOALS).astype(np.int64),
        epsilon=epsilon, sigma=sigma,
    )
    key = task_key(job.task)
    with quiet_experts():
        for i, k in enumerate(ks):
            rng = np.random.default_rng([job.seed, key, int(k)])
            replace = rng.random(length) < epsilon[i]
            act_out = out["actions"][i]
            act_out[:] = rng.uniform(-1.0, 1.0, (length, ACTION_DIM))
            noise = rng.normal(0.0, float(sigma[i]), (length, ACTION_DIM))
            obs_out, rew_out, suc_out = (out[name][i] for name in ("observations", "rewards",
                                                                   "successes"))
            env.set_task(goals[out["goal_index"][i]])
            obs, _ = env.reset()
            for t in range(length):
                obs_out[t] = obs
                action = act_out[t]
                if not replace[t]:
                    np.clip(policy.get_action(obs) + noise[t], -1.0, 1.0, out=action)
                # the env gets the stored float32 action: replaying the file reproduces the episode
                obs, reward, _, _, info = env.step(action)
                rew_out[t] = reward
                suc_out[t] = info["success"]
    return out


# ---------------------------------------------------------------- orchestration


def _make_meta(settings: dict) -> dict:
    from importlib.metadata import version

    from mtrl_bench import __version__

    ladder = ladder_episodes(settings["quality"], settings["episodes"])
    return dict(
        format="mtrl-bench episodes",
        settings=settings,
        schedule=dict(
            ladder_episodes=ladder,
            epsilon=f"max(0, 1 - k / ({EPSILON_DECAY_FRACTION} * {ladder}))",
            sigma=f"{SIGMA_MIN} + {SIGMA_SPAN} * (1 - k / {ladder})",
            action="uniform(-1, 1) with probability epsilon, else clip(expert + N(0, sigma^2))",
            expert="metaworld.policies.ENV_POLICY_MAP[task]",
            episode_seed="np.random.default_rng([seed, crc32(task), k])",
        ),
        goals=f"metaworld.MT1(task, seed={GOAL_SEED}).train_tasks[k % {NUM_GOALS}]",
        versions=dict(mtrl_bench=__version__, metaworld=version("metaworld"),
                      mujoco=version("mujoco"), numpy=np.__version__),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _write_dataset(path: Path, arrays: dict, meta: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a path would get ".npz" appended
            np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **arrays)

    atomic_write(path, write)


def _stale_reason(path: Path, settings: dict) -> str | None:
    """None when ``path`` is a finished file made with ``settings``, else why not (only the
    meta is read here; the arrays are validated when loaded)."""
    if path.exists() and not path.is_file():
        raise DatasetError(f"{path} is a folder (or another non-file), where the dataset "
                           "file belongs: move it away; mtrl-bench will not delete it")
    if not path.is_file():
        return "missing"
    try:
        mismatch = settings_mismatch(read_file_meta(path), settings)
    except DatasetError as err:
        return str(err)
    return f"{path}: made with other settings: {mismatch}" if mismatch else None


def default_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def chunk_jobs(tasks: list[str], quality: str, episodes: int, seed: int,
               episode_length: int, workers: int) -> list[ChunkJob]:
    """Task-major jobs, so that tasks finish (and are written) one after another; about four
    per worker and task so that tasks of different speed still keep all workers busy."""
    size = max(1, min(CHUNK_EPISODES, math.ceil(episodes / (4 * workers))))
    ladder = ladder_episodes(quality, episodes)
    return [ChunkJob(task, seed, ladder, episode_length, start,
                             min(start + size, episodes))
            for task in tasks for start in range(0, episodes, size)]


def _run_jobs(jobs: list[ChunkJob], workers: int, stack: contextlib.ExitStack):
    """Results of the jobs as they finish: in this process for one worker, else in a pool of
    spawned processes (MuJoCo state is not fork-safe; spawn also works on macOS)."""
    if workers == 1:
        return map(generate_chunk, jobs)
    import multiprocessing

    pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
        workers, initializer=init_worker))
    return pool.imap_unordered(generate_chunk, jobs)


#: bytes a generated step takes: in memory while a task's file is assembled (observation 39
#: and action 4 float32, reward float32, success bool; twice, for the concatenation), and
#: on disk, compressed (measured on MT5, rounded up)
MEMORY_BYTES_PER_STEP = 2 * (OBS_DIM * 4 + ACTION_DIM * 4 + 4 + 1)
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
    probe = nearest_existing(folder)
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


def _gb(size: float) -> str:
    """A size in the largest unit that keeps it at least 1 (3 significant digits), so a
    small need or a nearly full disk never reads as "0.0 MB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} bytes"


def generate_suite_dataset(tasks: list[str], quality: str, *, data_dir=None, episodes: int,
                           seed: int = 0, episode_length: int = MAX_EPISODE_STEPS,
                           workers: int | None = None, progress: bool = True,
                           force: bool = False) -> dict[str, Path]:
    """Generate every task not already generated with these settings; returns the file paths.

    A file that exists but cannot be read or was made with other settings is never replaced
    silently: it is an error naming it, unless ``force`` asks for regeneration. Missing
    tasks are generated, which is always said (on stderr), progress bar or not.
    """
    from tqdm import tqdm

    check_quality(quality)
    check_sizes(episodes, seed, episode_length)
    if workers is not None and workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    tasks = list(dict.fromkeys(normalize_task_name(t) for t in tasks))
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = data_dir / quality
    settings = {t: file_settings(t, quality, episodes, seed, episode_length) for t in tasks}
    paths = {t: dataset_path(data_dir, t, quality, episodes, seed, episode_length)
             for t in tasks}
    reasons = {t: _stale_reason(paths[t], settings[t]) for t in tasks}
    todo = [t for t in tasks if reasons[t] or force]
    damaged = [t for t in tasks if reasons[t] not in (None, "missing")]
    if damaged and not force:
        task = damaged[0]
        more = f" (and {len(damaged) - 1} more task(s))" if len(damaged) > 1 else ""
        raise DatasetError(f"{reasons[task]}{more}; "
                           + regenerate_hint(task, quality, episodes, seed, episode_length,
                                             data_dir))
    if not todo:
        return paths
    check_size(todo, episodes, episode_length, folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_temporary_files(folder, spare_live_writers=True)
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
                _write_dataset(paths[task], arrays, _make_meta(settings[task]))
    return paths


def ensure_suite_dataset(tasks: list[str], quality: str, *, data_dir=None, episodes: int,
                         seed: int = 0, episode_length: int = MAX_EPISODE_STEPS,
                         workers: int | None = None, progress: bool = True,
                         force: bool = False) -> dict[str, TaskDataset]:
    """Generate what is missing (or everything, with ``force``), then load and validate."""
    generate_suite_dataset(tasks, quality, data_dir=data_dir, episodes=episodes, seed=seed,
                           episode_length=episode_length, workers=workers, progress=progress,
                           force=force)
    return load_suite_dataset(tasks, quality, data_dir=data_dir, episodes=episodes, seed=seed,
                              episode_length=episode_length)


