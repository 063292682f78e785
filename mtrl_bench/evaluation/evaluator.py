"""Fast, exact evaluation: every task x goal rolled out at once, one policy forward per step.

Protocol (README "Evaluation"): each task on ``num_goals`` goal
variations (goal ``g`` = ``suites.make_env(task, g)``), one episode each of ``max_steps``
(500) steps; an episode succeeds if ``info["success"]`` is ever reported (as Meta-World's own
evaluator counts it); per task the success rate and the mean return.

How it is fast: the environments live in worker processes
(:mod:`mtrl_bench.evaluation.envpool`), and the policy sees all of them as one
``(N tasks, G goals, ...)`` batch, so a Prompt-DT agent does one batched, per-task-masked
forward per time step. How it is exact: every episode always
runs exactly ``max_steps`` steps from the goal's frozen start state; the envs and the policy
in eval mode are deterministic, so an evaluation is reproducible bit for bit, and
``tools/crosscheck_eval.py`` runs the same agent through Meta-World's own
``metaworld.evaluation.evaluation`` on the same goals for the cross-check.

Goals: ``Evaluator(num_goals=n)`` uses goal indices ``0..n-1`` (goals are i.i.d. draws of
Meta-World's MT1 generator, so the first n are as representative as any n, and a periodic
evaluation's goals are a subset of the final one's); ``evaluate(agent, num_goals=m)`` runs the
first ``m`` of those, e.g. few goals for learning curves and all 50 at the end, on the same
workers. At most ``max_envs`` environments exist at once (about 20 MB each); more task x goal
pairs are run in rounds of equal size, which changes nothing in the results.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import gin
import numpy as np

from mtrl_bench.errors import UserError
from mtrl_bench.evaluation.agents import Agent
from mtrl_bench.evaluation.envpool import ALL, IDLE, EnvPool
from mtrl_bench.suites import (
    ACTION_DIM,
    MAX_EPISODE_STEPS,
    NUM_GOALS,
    OBS_DIM,
    normalize_task_name,
)

DEFAULT_MAX_ENVS = 1024
#: environments a worker process holds at most: Meta-World takes ~20 MiB per environment
#: (measured: 2.8 GiB for 125), so a worker stays under ~1.5 GiB
MAX_ENVS_PER_WORKER = 64


@dataclass(frozen=True)
class EpisodeRecord:
    task: str
    goal: int
    success: bool
    episode_return: float
    first_success_step: int | None  # 0-based index of the step that first reported success
    return_to_first_success: float | None  # return up to and including that step


@dataclass
class EvalResult:
    tasks: list[str]
    goal_indices: list[int]
    max_steps: int
    episodes: list[EpisodeRecord]
    wall_time_s: float

    @property
    def num_goals(self) -> int:
        return len(self.goal_indices)

    @property
    def success(self) -> dict[str, float]:
        """Per-task success rate in [0, 1]."""
        return self._per_task(lambda e: float(e.success))

    @property
    def returns(self) -> dict[str, float]:
        """Per-task mean episode return."""
        return self._per_task(lambda e: e.episode_return)

    @property
    def mean_success(self) -> float:
        return float(np.mean(list(self.success.values())))

    @property
    def mean_return(self) -> float:
        return float(np.mean(list(self.returns.values())))

    @property
    def env_steps(self) -> int:
        return len(self.episodes) * self.max_steps

    def _per_task(self, value) -> dict[str, float]:
        sums = dict.fromkeys(self.tasks, 0.0)
        for episode in self.episodes:
            sums[episode.task] += value(episode)
        return {task: total / self.num_goals for task, total in sums.items()}

    def to_dict(self, step: int | None = None) -> dict:
        """The fields of a metrics "eval" record / final.json entry (rates in [0, 1])."""
        return {"step": step, "num_goals": self.num_goals, "success": self.success,
                "return": self.returns, "mean_success": self.mean_success,
                "mean_return": self.mean_return}

    def metrics_record(self, step: int) -> dict:
        return {"kind": "eval", **self.to_dict(step)}

    def episode_dicts(self) -> list[dict]:
        return [asdict(e) for e in self.episodes]


@gin.configurable(denylist=["tasks"])
class Evaluator:
    """Worker processes holding the suite's environments; :meth:`evaluate` rolls out an agent.

    Use as a context manager (or call :meth:`close`): the workers are stopped on exit,
    on errors and on Ctrl-C. ``workers`` defaults to the machine's CPU count.
    """

    def __init__(self, tasks: Sequence[str], num_goals: int = NUM_GOALS,
                 goal_indices: Sequence[int] | None = None, max_steps: int = MAX_EPISODE_STEPS,
                 workers: int | None = None, max_envs: int = DEFAULT_MAX_ENVS,
                 overlap: bool = True):
        self.tasks = [normalize_task_name(t) for t in tasks]
        self.goal_indices = self.check_arguments(self.tasks, num_goals, goal_indices, max_steps,
                                                 workers, max_envs)
        self.max_steps = max_steps
        self.overlap = overlap
        workers = workers or os.cpu_count() or 1
        envs = min(max_envs, workers * MAX_ENVS_PER_WORKER)  # memory bound per worker
        self.slots_per_task = max(1, min(len(self.goal_indices), envs // len(self.tasks)))
        slot_tasks = [t for t in self.tasks for _ in range(self.slots_per_task)]
        self.pool = EnvPool(slot_tasks, self.goal_indices, workers)

    @staticmethod
    def check_arguments(tasks: Sequence[str], num_goals: int = NUM_GOALS,
                        goal_indices: Sequence[int] | None = None,
                        max_steps: int = MAX_EPISODE_STEPS, workers: int | None = None,
                        max_envs: int = DEFAULT_MAX_ENVS, overlap: bool = True) -> list[int]:
        """Validate the arguments without starting anything; returns the goal indices."""
        if not tasks or len(set(tasks)) != len(tasks):
            raise UserError(f"evaluation needs a non-empty list of distinct tasks, got {tasks}")
        if goal_indices is None:
            if not 1 <= num_goals <= NUM_GOALS:
                raise UserError(f"num_goals={num_goals} is out of range 1..{NUM_GOALS}: each "
                                f"task has {NUM_GOALS} goals (Run.eval_goals and "
                                f"Run.final_eval_goals must be in 1..{NUM_GOALS})")
            goal_indices = range(num_goals)
        indices = [int(g) for g in goal_indices]
        if (not indices or len(set(indices)) != len(indices)
                or not all(0 <= g < NUM_GOALS for g in indices)):
            raise UserError(f"goal indices must be distinct values in 0..{NUM_GOALS - 1}, "
                            f"got {list(goal_indices)}")
        if not 1 <= max_steps <= MAX_EPISODE_STEPS:
            raise UserError(f"max_steps={max_steps} is out of range 1..{MAX_EPISODE_STEPS} "
                            "(Meta-World truncates episodes there)")
        if workers is not None and workers < 1:
            raise UserError(f"workers={workers} must be >= 1")
        if max_envs < len(tasks):
            raise UserError(f"max_envs={max_envs} must be at least the number of tasks "
                            f"({len(tasks)})")
        return indices

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.pool.close(graceful=exc_type is None)

    def evaluate(self, agent: Agent, num_goals: int | None = None,
                 progress: bool = False) -> EvalResult:
        """One episode per task x goal (the first ``num_goals`` goals, default all)."""
        from tqdm.auto import tqdm

        if num_goals is None:
            num_goals = len(self.goal_indices)
        if not 1 <= num_goals <= len(self.goal_indices):
            raise UserError(f"num_goals={num_goals} is out of range 1..{len(self.goal_indices)}")
        goals = self.goal_indices[:num_goals]
        rounds = math.ceil(len(goals) / self.slots_per_task)
        size = math.ceil(len(goals) / rounds)
        start = time.perf_counter()
        episodes: list[EpisodeRecord] = []
        with tqdm(total=self.num_tasks * len(goals) * self.max_steps, disable=not progress,
                  unit="step", unit_scale=True, desc="evaluate") as bar:
            for r in range(rounds):
                episodes += self._run_round(agent, goals[r * size:(r + 1) * size], bar)
        order = {(t, g): i for i, (t, g) in enumerate((t, g) for t in self.tasks for g in goals)}
        episodes.sort(key=lambda e: order[(e.task, e.goal)])
        return EvalResult(self.tasks, goals, self.max_steps, episodes,
                          time.perf_counter() - start)

    def _run_round(self, agent: Agent, goals: list[int], bar) -> list[EpisodeRecord]:
        """One episode of every task on ``goals``. With ``overlap`` and two or more goals,
        the goal columns form two halves stepped in turn: while the workers step one half,
        this process computes the other half's actions."""
        n, g, s = self.num_tasks, len(goals), self.slots_per_task
        # measured on 2 cores (results/BENCHMARKS.md): a win whenever the forward pass is
        # not tiny (125 envs, 0.1M model: 2,036 vs 1,431 env steps/s), a 6% loss when it is
        split = (self.overlap and g > 1
                 and "columns" in inspect.signature(agent.act).parameters)
        halves = [slice(0, (g + 1) // 2), slice((g + 1) // 2, g)] if split else [slice(0, g)]
        slot_goals = np.full((n, s), IDLE, dtype=np.int64)
        slot_goals[:, :g] = goals
        slot_groups = np.zeros((n, s), dtype=np.int64)
        for group, half in enumerate(halves):
            slot_groups[:, half] = group
        self.pool.set_goals(slot_goals.ravel(), slot_groups.ravel())
        obs = self.pool.reset().reshape(n, s, OBS_DIM)[:, :g]
        agent.reset(n, g)
        actions = np.zeros((n, s, ACTION_DIM), dtype=np.float32)
        returns = np.zeros((n, g))
        success = np.zeros((n, g), dtype=bool)
        first = np.full((n, g), -1)
        return_first = np.zeros((n, g))

        def act(half: slice, step: int) -> np.ndarray:
            width = half.stop - half.start
            out = np.asarray(agent.act(obs[:, half], half) if len(halves) > 1
                             else agent.act(obs[:, half]))
            if out.shape != (n, width, ACTION_DIM):
                raise ValueError(f"agent returned actions of shape {out.shape}, "
                                 f"expected {(n, width, ACTION_DIM)}")
            if not np.isfinite(out).all():
                i, j = np.argwhere(~np.isfinite(out).all(-1))[0]
                raise RuntimeError(f"the policy produced a non-finite action for "
                                   f"{self.tasks[i]} goal {goals[half.start + j]} at step {step}")
            return out

        pending = {0: act(halves[0], 0)}
        for step in range(self.max_steps):
            for h, half in enumerate(halves):
                actions[:, half] = pending.pop(h)
                self.pool.step_async(h if len(halves) > 1 else ALL, actions.reshape(-1,
                                                                                    ACTION_DIM))
                following = (h + 1) % len(halves)
                if following != h and (following != 0 or step + 1 < self.max_steps):
                    # the other half's next actions, computed while this half steps
                    pending[following] = act(halves[following], step + (following == 0))
                all_obs, all_rewards, all_success = self.pool.wait()
                obs[:, half] = all_obs.reshape(n, s, OBS_DIM)[:, half]
                rewards = all_rewards.reshape(n, s)[:, half]
                done_now = all_success.reshape(n, s)[:, half]
                if len(halves) > 1:
                    agent.observe(rewards, half)
                else:
                    agent.observe(rewards)
                returns[:, half] += rewards
                new = done_now & ~success[:, half]
                first[:, half][new] = step
                return_first[:, half][new] = returns[:, half][new]
                success[:, half] |= done_now
                bar.update(n * (half.stop - half.start))
                if len(halves) == 1 and step + 1 < self.max_steps:
                    pending[0] = act(half, step + 1)  # nothing to overlap with
        return [
            EpisodeRecord(task, goal, bool(success[i, j]), float(returns[i, j]),
                          int(first[i, j]) if success[i, j] else None,
                          float(return_first[i, j]) if success[i, j] else None)
            for i, task in enumerate(self.tasks) for j, goal in enumerate(goals)
        ]


