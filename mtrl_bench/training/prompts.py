"""Per-task conditioning data shared by training and evaluation: prompts and normalisers.

Prompt-DT conditions on a K'-step segment of a demonstration of the same task. HarmoDT
keeps two dedicated expert episodes per task for this (held out of training: a dataset's
``prompt_episodes``); generated datasets have no such split, so the demonstrations are the
task's highest-return *successful* episodes (falling back to the highest-return episodes
if fewer succeeded). Training samples random K'-step
segments of them, as Prompt-DT does; evaluation uses one fixed segment (the K' steps
ending at the best demonstration's first success, i.e. the part that shows the task being
solved) so that evaluation is deterministic.
"""

from __future__ import annotations

import numpy as np

DEFAULT_NUM_DEMONSTRATIONS = 5


def demonstration_indices(returns: np.ndarray, episode_success: np.ndarray,
                          count: int = DEFAULT_NUM_DEMONSTRATIONS) -> np.ndarray:
    """Indices of the ``count`` best episodes, successful ones first, each by return."""
    order = np.lexsort((-returns, ~episode_success.astype(bool)))
    return order[: max(1, min(count, len(returns)))]


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted returns-to-go along the last axis."""
    return np.flip(np.cumsum(np.flip(rewards, -1), -1), -1).copy()


def evaluation_prompt(dataset, prompt_len: int) -> dict[str, np.ndarray]:
    """The fixed K'-step prompt of a task (unscaled returns-to-go, raw states)."""
    best = dataset.demonstration_indices(1)[0]
    successes = dataset.successes[best]
    length = dataset.episode_length
    end = int(np.argmax(successes)) + 1 if successes.any() else length
    end = min(max(end, prompt_len), length)
    window = slice(end - prompt_len, end)
    return {
        "states": dataset.observations[best, window].astype(np.float32),
        "actions": dataset.actions[best, window].astype(np.float32),
        "returns_to_go": returns_to_go(dataset.rewards[best])[window, None].astype(np.float32),
        "timesteps": np.arange(window.start, window.stop, dtype=np.int64),
    }


def state_normalizer(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-task state mean and std over all transitions (std floored to avoid blow-ups)."""
    flat = observations.reshape(-1, observations.shape[-1]).astype(np.float64)
    return flat.mean(0).astype(np.float32), (flat.std(0) + 1e-6).astype(np.float32)
