"""Policies the evaluator rolls out: the Agent interface, Meta-World's scripted expert, and
a (masked) Prompt-DT / MTDT acting on every environment with one batched forward a step."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from mtrl_bench.suites import ACTION_DIM, OBS_DIM

ALL_GOALS = slice(None)  # an agent's default columns: every goal of the round


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
    :func:`mtrl_bench.training.prompts.evaluation_prompt` (raw states, unscaled returns-to-go); they
    are normalised and scaled here exactly as :mod:`mtrl_bench.training.sampling` does for training.
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

        from mtrl_bench.training.sampling import RTG_SCALE

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
        if model.cfg.prompted:
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
        from mtrl_bench.training.prompts import evaluation_prompt, state_normalizer

        stats = [state_normalizer(datasets[t].training().observations) for t in tasks]
        if target_returns is None:
            targets = [float(datasets[t].returns.max()) for t in tasks]
        elif isinstance(target_returns, Mapping):
            targets = [float(target_returns[t]) for t in tasks]
        else:
            targets = [float(target_returns)] * len(tasks)
        prompts = ([evaluation_prompt(datasets[t], model.cfg.prompt_len) for t in tasks]
                   if model.cfg.prompted else None)
        return cls(model, masks, prompts, np.stack([s[0] for s in stats]),
                   np.stack([s[1] for s in stats]), np.asarray(targets), **kwargs)

    def reset(self, num_tasks: int, num_goals: int) -> None:
        import torch

        from mtrl_bench.training.masking import TaskMasks

        n, k = self.target.shape[0], self.context_len
        if num_tasks != n:
            raise ValueError(f"agent built for {n} tasks, asked for {num_tasks}")
        source = self.mask_source
        if source is not None:  # the evaluated rows as they are now, in the forward's dtype
            rows = source.values[self.task_ids.to(source.values.device)].to(self.device)
            self.masks = TaskMasks(rows, source.segments,
                                   compute_dtype=self.autocast_dtype or self.dtype,
                                   soft_values=source.soft_values)
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


