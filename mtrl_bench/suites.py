"""Task suites (mt5/mt10/mt30/mt50, random-K:SEED) and the 50 goal variations per task.

Goals are built one way everywhere: ``metaworld.MT1(task, seed=GOAL_SEED).train_tasks``,
indexed 0..49. Datasets record the goal index of every episode and evaluation addresses
goals by the same index, so "goal 7 of reach-v3" means the same start state everywhere.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

from mtrl_bench.errors import UserError
from mtrl_bench.io import atomic_write, user_cache_dir

# HarmoDT config/MetaWorld/task.json order (github.com/charleshsc/HarmoDT), -v2 -> -v3.
MT50 = [
    f"{name}-v3"
    for name in (
        "basketball bin-picking button-press-topdown button-press button-press-wall "
        "coffee-button coffee-pull coffee-push dial-turn disassemble door-close door-lock "
        "door-open door-unlock hand-insert drawer-close drawer-open faucet-open faucet-close "
        "handle-press-side handle-press handle-pull-side handle-pull lever-pull "
        "peg-insert-side pick-place-wall pick-out-of-hole reach push-back push pick-place "
        "plate-slide plate-slide-side plate-slide-back plate-slide-back-side soccer push-wall "
        "shelf-place sweep-into sweep window-open window-close assembly "
        "button-press-topdown-wall hammer peg-unplug-side reach-wall stick-push stick-pull "
        "box-close"
    ).split()
]
# Meta-World's own MT10 list (metaworld.MT10().train_classes order).
MT10 = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
    "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
    "window-close-v3",
]
FIXED_SUITES: dict[str, list[str]] = {
    "mt5": MT50[:5],
    "mt10": MT10,
    "mt30": MT50[:30],
    "mt50": MT50,
}
NUM_GOALS = 50
OBS_DIM = 39  # Meta-World observations
ACTION_DIM = 4  # Meta-World actions, in [-1, 1]
MAX_EPISODE_STEPS = 500  # Meta-World truncates episodes here; stepping further raises
GOAL_SEED = 0  # seed of the per-task MT1 benchmark that defines the 50 goals
_RANDOM_SUITE = re.compile(r"^random-(\d+):(\d+)$")


def suite_names_help() -> str:
    return ", ".join(FIXED_SUITES) + ", random-K:SEED (K in 1..50)"


def resolve_suite(name: str) -> list[str]:
    """Task list of a suite name; raises UserError naming the valid suites."""
    if name in FIXED_SUITES:
        return list(FIXED_SUITES[name])
    match = _RANDOM_SUITE.match(name)
    if match:
        k, seed = int(match.group(1)), int(match.group(2))
        if not 1 <= k <= len(MT50):
            raise UserError(f"suite {name!r}: K must be between 1 and {len(MT50)}")
        return sorted(random.Random(seed).sample(MT50, k), key=MT50.index)
    raise UserError(f"unknown suite {name!r}; valid: {suite_names_help()}")


def random_suite_size(name: str) -> int | None:
    """K of a ``random-K:SEED`` suite name; None for any other suite."""
    match = _RANDOM_SUITE.match(name)
    return int(match.group(1)) if match else None


def canonical_suite_name(name: str) -> str:
    """One spelling per suite (``random-02:00`` -> ``random-2:0``), so that one suite is
    one setting of a run."""
    match = _RANDOM_SUITE.match(name)
    return f"random-{int(match.group(1))}:{int(match.group(2))}" if match else name


def normalize_task_name(name: str) -> str:
    """Accept 'reach', 'reach-v2' or 'reach-v3'; return the Meta-World 3.x name."""
    base = re.sub(r"-v[0-9]+$", "", name)
    full = f"{base}-v3"
    if full not in MT50:
        raise UserError(f"unknown task {name!r}; valid: the 50 Meta-World tasks ({MT50[0]}, ...)")
    return full


def resolve_tasks(suite: str | None = None, tasks: list[str] | None = None) -> list[str]:
    """Tasks from either an explicit list or a suite name."""
    if tasks:
        return [normalize_task_name(t) for t in tasks]
    if suite is None:
        raise UserError("give a suite (--suite) or a task list (--tasks)")
    return resolve_suite(suite)


@functools.cache
def goal_tasks(task: str) -> tuple:
    """The 50 goal variations (metaworld.Task objects) of a task, in index order.

    Building them (``MT1``: one env, 50 resets) takes about a second per task in every
    process that evaluates or generates data, so they are kept in a per-user cache keyed by
    Meta-World's version and ``GOAL_SEED``; an entry that is missing, unreadable or not 50
    goals of ``task`` is rebuilt, and a cache that cannot be written only costs time."""
    import pickle

    import metaworld

    try:
        path = goal_cache_path(task)
    except RuntimeError:  # no home folder: no cache
        path = None
    if path is not None:
        try:
            goals = pickle.loads(path.read_bytes())
            if _are_goals_of(goals, task):
                return goals
        except Exception:  # missing, truncated, garbage, classes that moved: rebuild
            pass
    goals = tuple(metaworld.MT1(task, seed=GOAL_SEED).train_tasks)
    if path is not None:
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(pickle.dumps(goals)))
        except OSError:
            pass
    return goals


def goal_cache_path(task: str) -> Path:
    """``~/.cache/mtrl-bench/goals/metaworld-<version>/<task>-seed<GOAL_SEED>.pkl``."""
    from importlib.metadata import version

    folder = user_cache_dir() / "goals" / f"metaworld-{version('metaworld')}"
    return folder / f"{task}-seed{GOAL_SEED}.pkl"


def _are_goals_of(goals, task: str) -> bool:
    return (isinstance(goals, tuple) and len(goals) == NUM_GOALS
            and all(getattr(goal, "env_name", None) == task for goal in goals))


@functools.cache
def env_class(task: str):
    import metaworld.env_dict

    return metaworld.env_dict.ALL_V3_ENVIRONMENTS[task]


def make_env(task: str, goal_index: int):
    """A fresh Meta-World env of ``task`` frozen to goal ``goal_index`` (0..49)."""
    if not 0 <= goal_index < NUM_GOALS:
        raise UserError(f"goal index {goal_index} out of range 0..{NUM_GOALS - 1}")
    env = env_class(task)()
    env.set_task(goal_tasks(task)[goal_index])
    return env
