"""Vectorised batch sampler: every task's dataset lives on the training device.

One call draws B sequences for each of N tasks at once (pure tensor indexing, no Python
loop over tasks or samples) and returns the task-grouped tensors :class:`DecisionTransformer` takes.

Segments follow Prompt-DT (``get_batch``): an episode is drawn with probability
proportional to its length (all episodes of a task have the same length, so uniformly)
and a start step uniformly inside it. The K-step segment runs from that step to at
most the episode end and is left-padded to K (padding: states 0, actions -10 as in
HarmoDT, returns-to-go 0, timesteps 0, attention mask 0; padded positions carry no loss).
Returns-to-go are undiscounted and scaled by ``rtg_scale`` (HarmoDT: 1/1000), states are
normalised per task (:func:`mtrl_bench.training.prompts.state_normalizer`).

The prompt is a K'-step window of one of the task's demonstration episodes
(:func:`mtrl_bench.training.prompts.demonstration_indices`), drawn per sequence; prompt windows
are drawn whole (never padded unless the episode is shorter than K').
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mtrl_bench.training.prompts import DEFAULT_NUM_DEMONSTRATIONS, returns_to_go, state_normalizer

ACTION_PAD = -10.0  # HarmoDT / Prompt-DT pad actions with -10
RTG_SCALE = 1.0 / 1000.0  # HarmoDT: returns-to-go / 1000


class _SegmentStore:
    """Episodes of all tasks in flat per-transition tensors, task after task.

    Task i owns transitions ``start[i] : start[i] + count[i] * length[i]``, grouped into
    ``count[i]`` consecutive episodes of ``length[i]`` steps; :meth:`fill` copies them in.
    """

    def __init__(self, counts: list[int], lengths: list[int], state_dim: int, act_dim: int,
                 device: torch.device):
        sizes = np.asarray(counts, dtype=np.int64) * np.asarray(lengths, dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        total = int(sizes.sum())
        self.states = torch.empty(total, state_dim, device=device)
        self.actions = torch.empty(total, act_dim, device=device)
        self.rtg = torch.empty(total, device=device)
        self.start = torch.tensor(self._starts, dtype=torch.long, device=device)
        self.count = torch.tensor(counts, dtype=torch.long, device=device)
        self.length = torch.tensor(lengths, dtype=torch.long, device=device)

    def fill(self, task: int, states: np.ndarray, actions: np.ndarray, rtg: np.ndarray) -> None:
        """Copy one task's (E, T, ...) arrays into its slice."""
        start = int(self._starts[task])
        stop = start + states.shape[0] * states.shape[1]
        for target, array in ((self.states, states), (self.actions, actions), (self.rtg, rtg)):
            flat = np.ascontiguousarray(array, dtype=np.float32).reshape(stop - start,
                                                                         *array.shape[2:])
            target[start:stop] = torch.from_numpy(flat)

    def sample(self, tasks: torch.Tensor, batch_size: int, seq_len: int, whole: bool,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
        """(len(tasks), batch_size, seq_len) segments; ``whole``: windows never run off the end."""
        start, count = self.start[tasks, None], self.count[tasks, None]
        length = self.length[tasks, None]
        u = torch.rand(len(tasks), batch_size, 2, generator=generator, device=generator.device,
                       dtype=torch.float64).to(start.device)
        episode = (u[..., 0] * count).long().clamp(max=count - 1)
        last_start = (length - seq_len).clamp(min=0) if whole else length - 1
        t0 = (u[..., 1] * (last_start + 1)).long().clamp(max=last_start)
        real = torch.minimum(length - t0, torch.full_like(t0, seq_len))  # steps before the end
        offsets = torch.arange(seq_len, device=start.device)
        pad = (seq_len - real).unsqueeze(-1)
        t = t0.unsqueeze(-1) + offsets - pad  # step inside the episode, < t0 on padding
        valid = offsets >= pad
        t = torch.where(valid, t, torch.zeros_like(t))
        index = (start + episode * length).unsqueeze(-1) + t
        keep = valid.unsqueeze(-1)
        return {
            "states": torch.where(keep, self.states[index], 0.0),
            "actions": torch.where(keep, self.actions[index], ACTION_PAD),
            "returns_to_go": torch.where(valid, self.rtg[index], 0.0).unsqueeze(-1),
            "timesteps": t,
            "attention_mask": valid.to(torch.float32),
        }


class TaskBatchSampler:
    """Draws task-grouped training batches on ``device`` from a seeded generator."""

    def __init__(
        self,
        datasets: Sequence,  # TaskDataset per task, in task-index order
        context_len: int,
        prompt_len: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rtg_scale: float = RTG_SCALE,
        num_demonstrations: int = DEFAULT_NUM_DEMONSTRATIONS,
    ):
        self.device = torch.device(device)
        self.context_len = context_len
        self.prompt_len = prompt_len
        self.batch_size = batch_size
        self.num_tasks = len(datasets)
        demos = [ds.demonstration_indices(num_demonstrations) for ds in datasets]
        lengths = [ds.episode_length for ds in datasets]
        dims = (datasets[0].observations.shape[-1], datasets[0].actions.shape[-1], self.device)
        self.data = _SegmentStore([ds.training().num_episodes for ds in datasets], lengths,
                                  *dims)
        self.demos = _SegmentStore([len(d) for d in demos], lengths, *dims)
        # task by task, so host memory never holds a second copy of the whole suite
        for i, ds in enumerate(datasets):
            train = ds.training()  # held-out prompt episodes are not trained on
            mean, std = state_normalizer(train.observations)
            self.data.fill(i, (train.observations - mean) / std, train.actions,
                           returns_to_go(train.rewards) * rtg_scale)
            demo = demos[i]
            self.demos.fill(i, (ds.observations[demo] - mean) / std, ds.actions[demo],
                            returns_to_go(ds.rewards[demo]) * rtg_scale)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.all_tasks = torch.arange(self.num_tasks, device=self.device)

    def sample(self, tasks: torch.Tensor | None = None, with_prompt: bool = True,
               batch_size: int | None = None) -> dict:
        """Model inputs grouped by task: tensors (N, B, K, ...), ``prompt`` (N, B, K', ...),
        ``task_ids`` (N,); ``tasks`` (default all) selects and orders the groups."""
        tasks = self.all_tasks if tasks is None else tasks
        b = batch_size or self.batch_size
        batch = self.data.sample(tasks, b, self.context_len, False, self.generator)
        if with_prompt:
            batch["prompt"] = self.demos.sample(tasks, b, self.prompt_len, True, self.generator)
        batch["task_ids"] = tasks
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
