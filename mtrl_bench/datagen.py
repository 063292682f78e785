"""Episode generation: Meta-World scripted experts corrupted by a replay-like noise ladder.

This module is what worker processes import, so it stays light: metaworld is imported by the
worker on first use. The file format, resume logic and CLI live in ``mtrl_bench.data``.

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
import signal
import warnings
import zlib
from dataclasses import dataclass

import numpy as np

from mtrl_bench.suites import NUM_GOALS

OBS_DIM = 39
ACTION_DIM = 4
MAX_EPISODE_LENGTH = 500  # Meta-World truncates at 500 steps; stepping further raises
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
