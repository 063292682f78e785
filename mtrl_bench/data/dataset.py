"""The offline dataset of a task: its file format, validation and loading.

A generated dataset is one file per (quality, task, settings),
``<data_dir>/<quality>/<task>__ep<N>_seed<S>_len<L>.npz`` written with ``np.savez_compressed``
(about 50 bytes per step on MT5). Arrays, one row per episode: ``observations`` (N, L, 39) float32
(the observation before each action), ``actions`` (N, L, 4) float32 in [-1, 1] (exactly what
the env received), ``rewards`` (N, L) float32, ``successes`` (N, L) bool (``info["success"]``
after each step), ``goal_index`` (N,) int64, ``epsilon`` and ``sigma`` (N,) float32, plus
``meta``: a JSON string with the settings (task, quality, episodes, seed, episode length,
generator version), the schedule, the goal construction and the library versions. Settings are
both in the name (different settings never collide) and in ``meta`` (checked on load; the
library versions are recorded, not enforced). How files are made:
:mod:`mtrl_bench.data.generation`; the paper's own layout: :mod:`mtrl_bench.data.external`.

Qualities (README "Datasets"): ``near-optimal`` with ``N`` episodes is the whole ``N``-episode
ladder of :mod:`mtrl_bench.data.generation`; ``sub-optimal`` with ``N`` episodes is the noisier
first half of a ``2N``-episode ladder, bit-identical to the first half of that dataset (the
paper's sub-optimal data is the first half of each near-optimal replay buffer).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtrl_bench.errors import DatasetError, UserError
from mtrl_bench.io import nearest_existing, user_cache_dir
from mtrl_bench.suites import ACTION_DIM, MAX_EPISODE_STEPS, NUM_GOALS, OBS_DIM, normalize_task_name
from mtrl_bench.training.prompts import DEFAULT_NUM_DEMONSTRATIONS, demonstration_indices

QUALITIES = ("near-optimal", "sub-optimal")
GENERATOR_VERSION = 1
DEFAULT_EPISODES = 100
DATA_DIR_ENV = "MTRL_BENCH_DATA_DIR"
CHUNK_EPISODES = 25  # at most this many episodes per worker job (progress, load balance)
_FILE_RE = re.compile(r"^(?P<task>[a-z0-9-]+)__ep(?P<episodes>\d+)_seed(?P<seed>\d+)"
                      r"_len(?P<length>\d+)\.npz$")
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
    return Path(env).expanduser() if env else user_cache_dir() / "data"


def dataset_path(data_dir: Path, task: str, quality: str, episodes: int, seed: int,
                 episode_length: int) -> Path:
    return Path(data_dir) / quality / f"{task}__ep{episodes}_seed{seed}_len{episode_length}.npz"


def ladder_episodes(quality: str, episodes: int) -> int:
    """Length of the ladder a dataset of that quality and size is the start of."""
    return episodes if quality == "near-optimal" else 2 * episodes


def check_quality(quality: str) -> str:
    if quality not in QUALITIES:
        raise UserError(f"unknown quality {quality!r}; valid: {', '.join(QUALITIES)}")
    return quality


def regenerate_hint(task: str, quality: str, episodes: int, seed: int,
                    episode_length: int, data_dir) -> str:
    """The command that regenerates one file, naming its data folder unless it is the
    default (followed without it, the command would write elsewhere and fix nothing)."""
    where = ("" if Path(data_dir).expanduser().resolve() == default_data_dir().resolve()
             else f" --data-dir {shlex.quote(str(data_dir))}")
    return (f"regenerate it with `mtrl-bench data --tasks {task} --quality {quality} "
            f"--episodes {episodes} --seed {seed} --episode-length {episode_length}{where} "
            "--force` (or rerun with --regenerate-data)")


def check_sizes(episodes: int | None, seed: int, episode_length: int) -> None:
    if episodes is not None and episodes < 1:
        raise UserError(f"episodes must be at least 1, got {episodes}")
    if seed < 0:
        raise UserError(f"seed must be non-negative, got {seed}")
    if not 1 <= episode_length <= MAX_EPISODE_STEPS:
        raise UserError(f"episode length must be between 1 and {MAX_EPISODE_STEPS} "
                        f"(Meta-World truncates there), got {episode_length}")


def file_settings(task: str, quality: str, episodes: int, seed: int, episode_length: int) -> dict:
    return dict(task=task, quality=quality, episodes=episodes, seed=seed,
                episode_length=episode_length, generator_version=GENERATOR_VERSION)


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def read_npz(path: Path, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
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


def read_file_meta(path: Path) -> dict:
    raw = read_npz(path, ("meta",))["meta"]
    try:
        meta = json.loads(str(raw[()]))
        meta["settings"]["task"]  # noqa: B018 (probe the structure)
    except Exception as err:
        raise DatasetError(f"{path}: unreadable meta data ({_one_line(err)})") from None
    return meta


def settings_mismatch(meta: dict, expected: dict) -> str | None:
    found = meta["settings"]
    wrong = [f"{key}={found.get(key)!r} in the file but {value!r} asked"
             for key, value in expected.items() if found.get(key) != value]
    return "; ".join(wrong) or None


def validate_arrays(arrays: dict, episodes: int, length: int, source: Path, *,
                    generated: bool) -> None:
    """Shapes, dtypes, finiteness and ranges; DatasetError naming ``source`` otherwise."""
    expected = dict(
        observations=(np.float32, (episodes, length, OBS_DIM)),
        actions=(np.float32, (episodes, length, ACTION_DIM)),
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


def load_file(path: Path, expected: dict) -> TaskDataset:
    """Load one generated file and check it against the settings that were asked for."""
    meta = read_file_meta(path)
    mismatch = settings_mismatch(meta, expected)
    if mismatch:
        raise DatasetError(f"{path}: settings do not match: {mismatch}")
    arrays = read_npz(path, ("observations", "actions", "rewards", "successes", "goal_index",
                              "epsilon", "sigma"))
    validate_arrays(arrays, expected["episodes"], expected["episode_length"], path, generated=True)
    meta["file"] = str(path)
    return TaskDataset(task=expected["task"], meta=meta, **arrays)


def find_files(data_dir: Path, quality: str) -> list[tuple[dict, Path]]:
    """(settings parsed from the name, path) of every dataset file of a quality."""
    folder = Path(data_dir) / quality
    found = []
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else ():
        match = _FILE_RE.match(path.name)
        if match:
            found.append((file_settings(match["task"], quality, int(match["episodes"]),
                                    int(match["seed"]), int(match["length"])), path))
    return found


def _resolve_file(data_dir: Path, task: str, quality: str, episodes: int | None, seed: int,
                  episode_length: int) -> tuple[dict, Path]:
    if episodes is not None:
        return (file_settings(task, quality, episodes, seed, episode_length),
                dataset_path(data_dir, task, quality, episodes, seed, episode_length))
    candidates = [(s, p) for s, p in find_files(data_dir, quality) if s["task"] == task
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


def missing_hint(data_dir: Path, task: str, quality: str) -> str:
    others = [p.name for s, p in find_files(data_dir, quality) if s["task"] == task]
    return f" (other settings present: {', '.join(others)})" if others else ""


def load_suite_dataset(tasks: list[str], quality: str, *, data_dir=None,
                       episodes: int | None = None, seed: int = 0,
                       episode_length: int = MAX_EPISODE_STEPS,
                       ) -> dict[str, TaskDataset]:
    """Load and validate every task's dataset; ``episodes=None`` takes the only size present."""
    check_quality(quality)
    check_sizes(episodes, seed, episode_length)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    datasets = {}
    for task in dict.fromkeys(normalize_task_name(t) for t in tasks):
        expected, path = _resolve_file(data_dir, task, quality, episodes, seed, episode_length)
        if path.exists() and not path.is_file():
            raise DatasetError(f"{path} is a folder (or another non-file), where the dataset "
                               f"file for {task} belongs: move it away")
        if not path.is_file():
            raise DatasetError(f"missing dataset for {task}: {path} does not exist"
                               f"{missing_hint(data_dir, task, quality)}; generate it with "
                               f"`mtrl-bench data`")
        try:
            datasets[task] = load_file(path, expected)
        except DatasetError as err:
            raise DatasetError(f"{err}; " + regenerate_hint(task, quality, expected["episodes"],
                                                            seed, episode_length, data_dir)
                               ) from None
    return datasets


def check_data_dir(data_dir) -> Path:
    """The data folder (default if None), refused at once if it cannot be one: a path
    through a regular file, or an existing folder this process cannot read."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    probe = nearest_existing(folder)
    if not probe.is_dir():
        raise UserError(f"data dir {folder} cannot be created: {probe} is not a folder")
    if folder.exists() and not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"data dir {folder} cannot be read")
    return folder


