"""Fast, exact evaluation: every task x goal rolled out at once, one policy forward per step.

Protocol (SPEC "Training and evaluation protocol"): each task on ``num_goals`` goal
variations (goal ``g`` = ``suites.make_env(task, g)``), one episode each of ``max_steps``
(500) steps; an episode succeeds if ``info["success"]`` is ever reported (as Meta-World's own
evaluator counts it); per task the success rate and the mean return.

How it is fast: the environments live in worker processes (:mod:`mtrl_bench.envpool`), and
the policy sees all of them as one ``(N tasks, G goals, ...)`` batch, so a Prompt-DT agent does
one batched, per-task-masked forward per time step. How it is exact: every episode always
runs exactly ``max_steps`` steps from the goal's frozen start state; the envs and the policy
in eval mode are deterministic, so an evaluation is reproducible bit for bit, and
:func:`metaworld_reference_evaluation` runs the same agent through
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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import gin
import numpy as np

from mtrl_bench.envpool import ACTION_DIM, ALL, IDLE, OBS_DIM, EnvPool
from mtrl_bench.errors import UserError
from mtrl_bench.suites import NUM_GOALS, normalize_task_name

MAX_EPISODE_STEPS = 500  # Meta-World truncates here; stepping further raises
ALL_GOALS = slice(None)  # an agent's default columns: every goal of the round
DEFAULT_MAX_ENVS = 1024
#: environments a worker process holds at most: Meta-World takes ~20 MiB per environment
#: (measured: 2.8 GiB for 125), so a worker stays under ~1.5 GiB
MAX_ENVS_PER_WORKER = 64


class Agent(Protocol):
    """A policy the evaluator can roll out on (N tasks, G goals) environments at once."""

    def reset(self, num_tasks: int, num_goals: int) -> None:
        """Start new episodes in all N x G environments."""

    def restart(self, done: np.ndarray) -> None:
        """Start new episodes in the environments where ``done`` (N, G) is True."""

    def act(self, observations: np.ndarray, columns: slice = ALL_GOALS) -> np.ndarray:
        """Observations (N, G', 39) float64 of the goal columns ``columns`` of the N x G
        environments (all of them by default) -> their actions (N, G', 4) in [-1, 1]. The
        evaluator acts on two halves of the columns in turn, to overlap one half's forward
        pass with the other's environment steps."""

    def observe(self, rewards: np.ndarray, columns: slice = ALL_GOALS) -> None:
        """Rewards (N, G') of the step just taken by the goal columns ``columns``."""


class ScriptedExpertAgent:
    """Meta-World's scripted expert of each task (``metaworld.policies``), as an Agent.

    Stateless, so the same expert gives the same actions in any evaluator: the cross-check's
    reference policy. Computed in a Python loop over environments: not for speed.
    """

    def __init__(self, tasks: Sequence[str]):
        from metaworld.policies import ENV_POLICY_MAP

        self.policies = [ENV_POLICY_MAP[task]() for task in tasks]

    def reset(self, num_tasks: int, num_goals: int) -> None:
        if num_tasks != len(self.policies):
            raise ValueError(f"expert built for {len(self.policies)} tasks, asked for {num_tasks}")

    def restart(self, done: np.ndarray) -> None:
        pass

    def act(self, observations: np.ndarray, columns: slice = ALL_GOALS) -> np.ndarray:
        n, g, _ = observations.shape
        actions = np.empty((n, g, ACTION_DIM), dtype=np.float32)
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips
            warnings.simplefilter("ignore", UserWarning)
            for i, policy in enumerate(self.policies):
                for j in range(g):
                    actions[i, j] = policy.get_action(observations[i, j])
        return actions

    def observe(self, rewards: np.ndarray, columns: slice = ALL_GOALS) -> None:
        pass


class DecisionTransformerAgent:
    """A (masked) Prompt-DT / MTDT acting on all environments with one forward per step.

    Per environment it keeps the last K steps (states normalised with the task's
    ``state_mean``/``state_std``, actions taken, returns-to-go, timesteps), left-padded with
    zeros and masked out while fewer than K steps exist, as Prompt-DT's ``get_action`` does.
    The return-to-go starts at the task's ``target_returns`` (unscaled) and drops by each
    reward; the model sees it times ``rtg_scale``. ``prompts``: per task the dict of
    :func:`mtrl_bench.prompts.evaluation_prompt` (raw states, unscaled returns-to-go); they
    are normalised and scaled here exactly as :mod:`mtrl_bench.sampling` does for training.
    ``task_ids``: the row of each evaluated task in ``masks`` and in the MTDT task table
    (default 0..N-1). The model and ``masks`` are read live: each :meth:`reset` (the start of
    an evaluation) copies the current mask rows, so one agent built before training follows
    the trainer's weight and mask updates. The model is put in eval mode for each forward
    and restored after. ``autocast_dtype`` (e.g. torch.bfloat16 on CUDA) trades
    exactness for speed. Note that float32 results may differ at rounding level with the
    batch shape (BLAS blocking), so the same goal evaluated with a different number of goals
    at once can follow a slightly different trajectory; a given configuration is repeatable.
    """

    def __init__(self, model, masks, prompts, state_mean, state_std, target_returns,
                 rtg_scale: float | None = None, device=None, task_ids=None,
                 autocast_dtype=None):
        import torch

        from mtrl_bench.sampling import RTG_SCALE

        self.model = model
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = param.dtype
        n = len(target_returns)
        self.rtg_scale = RTG_SCALE if rtg_scale is None else rtg_scale
        self.autocast_dtype = autocast_dtype

        def tensor(x, dtype=None):
            return torch.as_tensor(np.asarray(x), device=self.device, dtype=dtype or self.dtype)

        self.task_ids = tensor(np.arange(n) if task_ids is None else task_ids, torch.long)
        if self.task_ids.shape != (n,):
            raise ValueError(f"task_ids must have shape ({n},), got {tuple(self.task_ids.shape)}")
        self.mask_source = masks
        self.masks = None
        self.mean = tensor(state_mean).view(n, 1, OBS_DIM)
        self.std = tensor(state_std).view(n, 1, OBS_DIM)
        self.target = tensor(target_returns).view(n, 1) * self.rtg_scale
        self.prompt = None
        if model.cfg.conditioning == "prompt":
            if prompts is None or len(prompts) != n:
                raise ValueError("Prompt-DT conditioning needs one prompt per task")
            states = tensor(np.stack([p["states"] for p in prompts]))  # (N, K', 39)
            length = states.shape[1]
            self.prompt = {
                "states": ((states - self.mean) / self.std).unsqueeze(1),
                "actions": tensor(np.stack([p["actions"] for p in prompts])).unsqueeze(1),
                "returns_to_go": (tensor(np.stack([p["returns_to_go"] for p in prompts]))
                                  * self.rtg_scale).unsqueeze(1),
                "timesteps": tensor(np.stack([p["timesteps"] for p in prompts]),
                                    torch.long).unsqueeze(1),
                "attention_mask": torch.ones(n, 1, length, device=self.device, dtype=self.dtype),
            }
        self.context_len = model.cfg.context_len

    @classmethod
    def from_datasets(cls, model, datasets: Mapping, tasks: Sequence[str], masks=None,
                      target_returns: Mapping[str, float] | float | None = None, **kwargs):
        """Prompts, normalisers and default targets from each task's dataset.

        Default target return: the task's best episode return in its dataset, the highest
        return the data shows to be reachable on that task. (HarmoDT conditions every task on
        4500, far above what low-reward tasks reach: an expert push-back episode returns
        about 360.) ``target_returns`` overrides it per task (mapping) or for all (number).
        """
        from mtrl_bench.prompts import evaluation_prompt, state_normalizer

        stats = [state_normalizer(datasets[t].training().observations) for t in tasks]
        if target_returns is None:
            targets = [float(datasets[t].returns.max()) for t in tasks]
        elif isinstance(target_returns, Mapping):
            targets = [float(target_returns[t]) for t in tasks]
        else:
            targets = [float(target_returns)] * len(tasks)
        prompts = ([evaluation_prompt(datasets[t], model.cfg.prompt_len) for t in tasks]
                   if model.cfg.conditioning == "prompt" else None)
        return cls(model, masks, prompts, np.stack([s[0] for s in stats]),
                   np.stack([s[1] for s in stats]), np.asarray(targets), **kwargs)

    def reset(self, num_tasks: int, num_goals: int) -> None:
        import torch

        from mtrl_bench.masking import TaskMasks

        n, k = self.target.shape[0], self.context_len
        if num_tasks != n:
            raise ValueError(f"agent built for {n} tasks, asked for {num_tasks}")
        source = self.mask_source
        if source is not None:  # the evaluated rows as they are now, in the forward's dtype
            rows = source.soft[self.task_ids.to(source.soft.device)].to(self.device)
            self.masks = TaskMasks(rows, source.segments,
                                   compute_dtype=self.autocast_dtype or self.dtype)
        shape = (n, num_goals, k)
        zeros = dict(device=self.device, dtype=self.dtype)
        self.states = torch.zeros(*shape, OBS_DIM, **zeros)
        self.actions = torch.zeros(*shape, ACTION_DIM, **zeros)
        self.rtg = torch.zeros(*shape, 1, **zeros)
        self.timesteps = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.length = torch.zeros(n, num_goals, dtype=torch.long, device=self.device)
        self.rtg_now = self.target.expand(n, num_goals).clone()
        self.positions = torch.arange(k, device=self.device)

    def restart(self, done: np.ndarray) -> None:
        import torch

        mask = torch.as_tensor(np.asarray(done, dtype=bool), device=self.device)
        for buffer in (self.states, self.actions, self.rtg, self.timesteps, self.length):
            buffer[mask] = 0
        self.rtg_now[mask] = self.target.expand_as(self.rtg_now)[mask]

    def act(self, observations: np.ndarray, columns: slice = ALL_GOALS) -> np.ndarray:
        import torch

        c = columns
        obs = torch.as_tensor(observations, device=self.device).to(self.dtype)
        obs = (obs - self.mean) / self.std
        length = self.length[:, c]
        t = self.timesteps[:, c, -1] + (length > 0).long()  # 0 at an episode's start

        def push(buffer, value):  # drop the oldest step of the columns, append ``value``
            buffer[:, c] = torch.cat((buffer[:, c, 1:], value.unsqueeze(2)), dim=2)
            return buffer[:, c]

        states = push(self.states, obs)
        actions = push(self.actions, torch.zeros_like(self.actions[:, c, 0]))
        rtg = push(self.rtg, self.rtg_now[:, c].unsqueeze(-1))
        timesteps = push(self.timesteps, t)
        self.length[:, c] = length = (length + 1).clamp(max=self.context_len)
        attention = (self.positions >= self.context_len - length.unsqueeze(-1))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), torch.autocast(
                    self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                    enabled=self.autocast_dtype is not None):
                pred = self.model(states, actions, rtg, timesteps, attention.to(self.dtype),
                                  prompt=self.prompt, task_ids=self.task_ids, masks=self.masks,
                                  last_only=True)
        finally:
            self.model.train(was_training)
        action = pred[:, :, -1].to(self.dtype)
        self.actions[:, c, -1] = action
        return action.to("cpu", torch.float32).numpy()

    def observe(self, rewards: np.ndarray, columns: slice = ALL_GOALS) -> None:
        import torch

        self.rtg_now[:, columns] -= (torch.as_tensor(rewards, device=self.device)
                                     .to(self.dtype) * self.rtg_scale)


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
                            "(Meta-World truncates episodes at 500 steps)")
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


# ----------------------------------------------------------------------- cross-check
def metaworld_reference_evaluation(agent: Agent, tasks: Sequence[str], goal_indices: Sequence[int],
                                   max_steps: int = MAX_EPISODE_STEPS):
    """Run ``agent`` through Meta-World's own ``metaworld.evaluation.evaluation`` on the
    same goals as :class:`Evaluator`; returns its (per-task success, per-task episode returns).

    Meta-World's evaluator keeps one environment per task and counts that environment's first
    ``num_episodes`` episodes, ending each episode at its first success. So each task gets one
    env from ``suites.make_env`` that moves to the next of ``goal_indices`` at every reset,
    making its episodes exactly our goals in order; its returns are therefore the returns up
    to the first success (:attr:`EpisodeRecord.return_to_first_success`) or the full return.
    The agent sees N tasks x 1 env; episode ends become ``agent.restart`` and rewards, which
    Meta-World's agent interface does not pass, are read from a wrapper.
    """
    import gymnasium as gym
    from metaworld.evaluation import evaluation
    from metaworld.wrappers import AutoTerminateOnSuccessWrapper

    from mtrl_bench.suites import goal_tasks, make_env

    class GoalSequence(gym.Wrapper):
        def __init__(self, env, goals):
            super().__init__(env)
            self.goals, self.episode = goals, 0

        def reset(self, **kwargs):
            self.env.unwrapped.set_task(self.goals[self.episode % len(self.goals)])
            self.episode += 1
            return self.env.reset(**kwargs)

    class LastReward(gym.Wrapper):
        last_reward = 0.0

        def step(self, action):
            out = self.env.step(action)
            self.last_reward = out[1]
            return out

    def build(task):
        env = gym.wrappers.TimeLimit(make_env(task, goal_indices[0]), max_steps)
        env = gym.wrappers.RecordEpisodeStatistics(AutoTerminateOnSuccessWrapper(env))
        return LastReward(GoalSequence(env, [goal_tasks(task)[g] for g in goal_indices]))

    class Adapter:
        def __init__(self):
            self.started = False

        def reset(self, env_mask):
            if not self.started:
                agent.reset(len(tasks), 1)
                self.started = True
                return
            agent.observe(np.asarray(envs.get_attr("last_reward"), dtype=np.float64)[:, None])
            agent.restart(np.asarray(env_mask, dtype=bool)[:, None])

        def eval_action(self, observations):
            return np.asarray(agent.act(observations[:, None]))[:, 0]

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="gymnasium")
        envs = gym.vector.SyncVectorEnv([lambda t=t: build(t) for t in tasks],
                                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        try:
            _, _, success, returns = evaluation(Adapter(), envs, num_episodes=len(goal_indices))
        finally:
            envs.close()
    return success, returns
