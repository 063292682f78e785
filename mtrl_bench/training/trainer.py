"""One trainer for every method: a step trains all tasks at once with their own masks.

A step draws B sequences from every task (:class:`TaskBatchSampler`), runs ONE batched
forward/backward in which task i uses its effective weights θ ⊙ 1[M_i = 1] and sends its
gradient back scaled by M_i (:mod:`mtrl_bench.training.masking`), and takes one AdamW step. The
loss is the mean over tasks of each task's action MSE on its valid (unpadded) positions.
When the method wants a mask update, the same backward pass also records every task's
gradient w.r.t. its effective weights, so an update costs no extra backward passes.

A method that combines gradients (PCGrad, CAGrad) gets every task's gradient of its own
loss instead: without masks from one vectorised pass (``torch.func.vmap`` over the task
groups of the same batch: the FLOPs of one backward pass, N x the parameters in gradient
memory), with masks from one backward pass per task over the same forward graph.

Defaults (``configs/base.gin`` cites them) follow HarmoDT: AdamW lr 1e-4, weight decay
1e-4, linear warm-up, gradient-norm clip 0.25; bf16 autocast on CUDA.

The hot path has no Python loop over tasks and no host-device sync; the loss is read
back only every ``log_every`` steps and the masks only when they are updated
(``tools/bench_train.py`` compares it with the HarmoDT reference loop's shape).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import gin
import torch

from mtrl_bench.errors import Diverged, UserError
from mtrl_bench.io import atomic_write
from mtrl_bench.method import GradientContext, MaskUpdateContext, Method, build_method
from mtrl_bench.training.masking import TaskMasks
from mtrl_bench.training.model import DecisionTransformer, PromptDTConfig
from mtrl_bench.training.sampling import TaskBatchSampler

CHECKPOINT_FORMAT = 2
#: far beyond any sensible value, yet small enough for float32 arithmetic (3.4e38)
MAX_SCALAR = 1e30
#: sequences per task per step: the batch of every task is held at once (HarmoDT uses 8)
MAX_BATCH = 4096
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; asking for CUDA without a GPU is a UserError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; valid: {', '.join(DEVICES)} (or cuda:N)")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} was asked for but no CUDA GPU is available; "
                            "use --device cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} does not exist; this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s)")
    return resolved


def masked_action_loss(pred: torch.Tensor, target: torch.Tensor,
                       valid: torch.Tensor) -> torch.Tensor:
    """(N,) per-task action MSE over valid positions (HarmoDT's loss, per task group)."""
    squared = (pred.float() - target).square().sum(-1)  # (N, B, K)
    per_task = (squared * valid).sum(dim=(1, 2))
    return per_task / (valid.sum(dim=(1, 2)) * target.shape[-1])


@gin.configurable
class Trainer:
    """Trains one shared model on all tasks with the chosen method's masks."""

    def __init__(
        self,
        datasets: Mapping,  # task name -> TaskDataset; the order fixes the task index
        method: str | Method = "promptdt",
        *,
        total_steps: int = 20_000,
        batch_size: int = 8,
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 200,
        grad_clip: float = 0.25,
        device: str = "auto",
        bf16: bool = True,
        seed: int = 0,
        log_every: int = 100,
        compile: bool = False,
        model_config: PromptDTConfig | None = None,
    ):
        if not datasets:
            raise UserError("no tasks to train on")
        self.check_arguments(total_steps=total_steps, batch_size=batch_size,
                             learning_rate=learning_rate, weight_decay=weight_decay,
                             warmup_steps=warmup_steps, grad_clip=grad_clip,
                             log_every=log_every)
        self.device = resolve_device(device)
        self.tasks = list(datasets)
        self.num_tasks = len(self.tasks)
        self.method = build_method(method) if isinstance(method, str) else method
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.grad_clip = grad_clip
        self.log_every = log_every
        self.seed = seed
        self.autocast = bf16 and self.device.type == "cuda"

        torch.manual_seed(seed)  # model initialisation and dropout
        self.config = dataclasses.replace(
            model_config or PromptDTConfig(),
            conditioning=self.method.conditioning, num_tasks=self.num_tasks,
        )
        self.model = DecisionTransformer(self.config).to(self.device)
        self._model_fn = torch.compile(self.model) if compile else self.model
        self.sampler = TaskBatchSampler(
            [datasets[t] for t in self.tasks], self.config.context_len, self.config.prompt_len,
            batch_size, self.device, seed=seed + 1,
        )
        self.method_generator = torch.Generator(device=self.device)
        self.method_generator.manual_seed(seed + 2)
        soft = self.method.initial_masks(
            self.num_tasks, self.model.mask_segments, self.model.maskable_flat(),
            self.method_generator,
        )
        self.masks = None if soft is None else TaskMasks(
            soft.to(self.device, torch.float32), self.model.mask_segments,
            compute_dtype=torch.bfloat16 if self.autocast else torch.float32,
            soft_values=self.method.soft_masks,
        )
        #: which entries each task uses at the start (M == 1), to measure how far masks move
        self.initial_active = None if self.masks is None else self.masks.values == 1
        self.streams = self._stream_digests()
        cuda = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=learning_rate, weight_decay=weight_decay,
            **({"fused": True} if cuda else {"foreach": True}),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _LinearWarmup(warmup_steps))
        self.step = 0
        self.last_task_losses: torch.Tensor | None = None
        self._loss_sum = torch.zeros((), device=self.device)
        self._first_nonfinite_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._first_nonfinite_tasks = torch.zeros(self.num_tasks, dtype=torch.bool,
                                                  device=self.device)
        self._interval_start = 0  # the step the open logging interval began at
        self._train_seconds = 0.0  # time spent in train() since the last log
        #: seconds spent in mask updates by this process (device work included)
        self.mask_update_seconds = 0.0

    def _stream_digests(self) -> dict[str, str | None]:
        """What this run's seed fixed, read off what the trainer built (not off the seed):
        digests of the initial weights, of the batch stream (the sampler's generator state
        and the shape of the data it draws from) and of the initial masks. Two runs whose
        digests agree started from the same weights, draw the same batches or start from
        the same masks: their results are paired by seed (analysis pairs only those)."""
        weights = [value for value in self.model.state_dict().values()]
        sampler = self.sampler
        batches = [sampler.generator.get_state(), sampler.data.count, sampler.data.length,
                   sampler.demos.count]
        return {"initial_weights": tensor_digest(weights),
                "batch_stream": tensor_digest(batches),
                "initial_masks": None if self.masks is None else tensor_digest([self.masks.values])}

    def mask_movement(self) -> dict[str, object]:
        """How far the masks moved and how much tasks share: per task the share of entries
        whose use (M == 1) differs from the start, and the mean over task pairs of the
        Jaccard overlap of the entries they use (1 = one mask for all tasks)."""
        active = self.masks.values == 1
        moved = (active != self.initial_active).float().mean(dim=1)
        used = active.float()
        both = used @ used.T  # (N, N) entries used by both tasks
        sizes = used.sum(dim=1)
        union = sizes[:, None] + sizes[None, :] - both
        pairs = torch.triu_indices(self.num_tasks, self.num_tasks, offset=1, device=used.device)
        jaccard = (both / union.clamp(min=1))[pairs[0], pairs[1]]
        return {"moved": moved.tolist(),
                "overlap": jaccard.mean().item() if jaccard.numel() else None}

    @staticmethod
    def check_arguments(*, total_steps: int, batch_size: int, learning_rate: float,
                        weight_decay: float, warmup_steps: int, grad_clip: float,
                        log_every: int, **_) -> None:
        """Refuse values no run can use (also called by the runner before any work)."""
        for name, value in (("total_steps", total_steps), ("batch_size", batch_size),
                            ("warmup_steps", warmup_steps), ("log_every", log_every)):
            if value < 1:
                raise UserError(f"Trainer.{name} must be >= 1, got {value}")
        for name, value in (("learning_rate", learning_rate), ("grad_clip", grad_clip)):
            if not 0 < value < MAX_SCALAR:
                raise UserError(f"Trainer.{name} must be a positive number below "
                                f"{MAX_SCALAR:g}, got {value}")
        if batch_size > MAX_BATCH:
            raise UserError(f"Trainer.batch_size (Run.batch_size) is {batch_size} sequences "
                            f"per task; at most {MAX_BATCH} are supported (HarmoDT: 8)")
        if not weight_decay >= 0 or not math.isfinite(weight_decay):
            raise UserError(f"Trainer.weight_decay must be >= 0, got {weight_decay}")

    # ----------------------------------------------------------------- one step
    @property
    def sequences_per_step(self) -> int:
        return self.num_tasks * self.batch_size

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def _task_losses(self, batch: dict, model=None) -> torch.Tensor:
        """(N,) per-task losses of one task-grouped batch (the forward pass)."""
        prompt = batch.get("prompt") if self.config.prompted else None
        with self._autocast():
            pred = (model or self._model_fn)(
                batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"],
                batch["attention_mask"], prompt=prompt, task_ids=batch["task_ids"],
                masks=self.masks,
            )
        return masked_action_loss(pred, batch["actions"], batch["attention_mask"])

    def loss_and_backward(self, batch: dict, capture: bool = False) -> torch.Tensor:
        """Forward/backward one task-grouped batch; returns per-task losses (N,).

        Leaves the gradient of mean_i L_i in ``.grad``; with ``capture`` also leaves
        ``dL_i/dW_i`` for every task in ``self.masks.capture`` (N, P).
        """
        if capture:
            self.masks.start_capture(scale=batch["states"].shape[0])
        task_losses = self._task_losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        task_losses.mean().backward()
        return task_losses.detach()

    def per_task_gradients(self, batch: dict, capture: bool = False):
        """(N,) losses and {parameter name: (N, *shape) dL_i/dθ} for every parameter.

        Without masks: one vectorised pass (``torch.func.vmap`` over the task groups, each
        task a group of one; dropout draws differ per task). With masks (whose backward is a
        custom autograd function): one forward and one backward per task on its graph; with
        ``capture`` the mask capture receives every task's row as in a single backward.
        """
        names = [name for name, _ in self.model.named_parameters()]
        if self.masks is None:
            from torch.func import functional_call, grad_and_value, vmap
            from torch.utils._pytree import tree_map

            params = {n: p.detach() for n, p in self.model.named_parameters()}
            buffers = dict(self.model.named_buffers())

            def task_loss(params, one_task):
                group = tree_map(lambda x: x.unsqueeze(0), one_task)  # a group of one task
                return self._task_losses(group, lambda *args, **kwargs: functional_call(
                    self.model, (params, buffers), args, kwargs))[0]

            with self.model.explicit_attention():  # the fused kernel has no vmap rule
                grads, losses = vmap(grad_and_value(task_loss), in_dims=(None, 0),
                                     randomness="different")(params, batch)
            return losses.detach(), grads
        if capture:
            self.masks.start_capture(scale=1.0)
        task_losses = self._task_losses(batch, self.model)
        grads = {n: [] for n in names}
        parameters = [p for _, p in self.model.named_parameters()]
        for i in range(self.num_tasks):
            per_task = torch.autograd.grad(task_losses[i], parameters,
                                           retain_graph=i + 1 < self.num_tasks,
                                           allow_unused=True)
            for name, param, g in zip(names, parameters, per_task):
                grads[name].append(torch.zeros_like(param) if g is None else g)
        return task_losses.detach(), {n: torch.stack(g) for n, g in grads.items()}

    def combined_backward(self, batch: dict, capture: bool = False) -> torch.Tensor:
        """Leave in ``.grad`` the method's combination of the per-task gradients (the
        parameters it acts on) and their mean (the others); returns the losses (N,)."""
        task_losses, grads = self.per_task_gradients(batch, capture)
        acting = [name for name, _ in self.method.gradient_parameters(self.model)]
        unknown = [name for name in acting if name not in grads]
        if unknown:
            raise UserError(f"{self.method.name}.gradient_parameters names {unknown[0]!r}, "
                            "not a parameter of the model")
        sizes = [grads[n][0].numel() for n in acting]
        flat = torch.empty(self.num_tasks, sum(sizes), device=self.device)
        offset = 0
        for name, size in zip(acting, sizes):  # one N x P copy alive at a time, not two
            flat[:, offset:offset + size] = grads.pop(name).reshape(self.num_tasks, -1)
            offset += size
        combined = self.method.combine_gradients(GradientContext(
            step=self.step, total_steps=self.total_steps, task_grads=flat,
            task_losses=task_losses.float(), generator=self.method_generator))
        del flat
        if combined.shape != (offset,):
            raise UserError(f"{self.method.name}.combine_gradients returned shape "
                            f"{tuple(combined.shape)}, expected ({offset},)")
        self.optimizer.zero_grad(set_to_none=True)
        offset = 0
        parameters = dict(self.model.named_parameters())
        for name in acting:
            param = parameters[name]
            param.grad = combined[offset:offset + param.numel()].view_as(param).to(param.dtype)
            offset += param.numel()
        for name, param in parameters.items():
            if param.grad is None:  # parameters the method does not act on: the mean
                param.grad = grads[name].mean(dim=0).to(param.dtype)
        return task_losses

    def train_step(self) -> dict | None:
        """One optimiser step on all tasks; returns the mask metrics if masks were updated."""
        update = self.masks is not None and self.method.wants_update(self.step)
        capture = update and self.method.mask_update_needs_gradients
        batch = self.sampler.sample(with_prompt=self.config.prompted)
        if self.method.combines_gradients:
            task_losses = self.combined_backward(batch, capture=capture)
        else:
            task_losses = self.loss_and_backward(batch, capture=capture)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip,
                                                   foreach=True)
        self._watch_finite(task_losses, grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.last_task_losses = task_losses
        self._loss_sum += task_losses.mean()
        metrics = None
        if update:
            grads = self.masks.capture
            self.masks.stop_capture()
            self._synchronize()  # the step's queued work is not the update's
            started = time.perf_counter()
            metrics = self.update_masks(grads, task_losses)  # grads None without capture
            self._synchronize()
            self.mask_update_seconds += time.perf_counter() - started
        self.step += 1
        if metrics is not None:
            metrics["step"] = self.step  # records carry the steps completed when written
        return metrics

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _watch_finite(self, task_losses: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Remember, on the device and without a sync, the first step whose loss or gradient
        was not finite and which tasks' losses were not; :meth:`check_finite` reads it."""
        bad_tasks = ~torch.isfinite(task_losses.float())
        bad = bad_tasks.any() | ~torch.isfinite(grad_norm)
        first = bad & (self._first_nonfinite_step < 0)
        self._first_nonfinite_step.copy_(torch.where(first, self.step + 1,
                                                     self._first_nonfinite_step))
        self._first_nonfinite_tasks.copy_(torch.where(first, bad_tasks,
                                                      self._first_nonfinite_tasks))

    def check_weights_finite(self) -> None:
        """Raise :class:`Diverged` unless every weight is finite (one sync per parameter):
        what an evaluation or a checkpoint needs, whatever the losses said."""
        self.check_finite()
        if not _all_finite(self.model.state_dict()):
            raise Diverged(f"non-finite weights after step {self.step} (the losses and "
                           "gradients were finite)")

    def check_finite(self) -> None:
        """Raise :class:`Diverged` if any step so far had a non-finite loss or gradient
        (one host-device sync; the runner calls it before every checkpoint)."""
        step = int(self._first_nonfinite_step)
        if step < 0:
            return
        tasks = [t for t, bad in zip(self.tasks, self._first_nonfinite_tasks.tolist()) if bad]
        what = (f"non-finite loss for {', '.join(tasks[:3])}"
                + (f" and {len(tasks) - 3} more task(s)" if len(tasks) > 3 else "")
                if tasks else "non-finite gradient norm (all task losses finite)")
        raise Diverged(f"training diverged at step {step}: {what}")

    def update_masks(self, task_grads: torch.Tensor, task_losses: torch.Tensor) -> dict:
        """Hand the captured per-task gradients to the method; refresh the cached masks."""
        ctx = MaskUpdateContext(
            step=self.step, total_steps=self.total_steps, masks=self.masks.values,
            task_grads=task_grads, task_losses=task_losses.float(),
            theta=self.model.maskable_flat(), segments=self.model.mask_segments,
            generator=self.method_generator,
        )
        extra = self.method.update_masks(ctx)
        self.masks.refresh()
        return {"kind": "mask", "step": self.step, "entries": self.masks.values.shape[1],
                **self.method.mask_metrics(self.masks.values), **self.mask_movement(), **extra}

    # ----------------------------------------------------------------- the loop
    def train(self, until_step: int | None = None,
              callback: Callable[[dict], None] | None = None) -> None:
        """Train up to ``until_step`` (default: the end); call ``callback`` with metrics.

        Metrics: every ``log_every`` steps {"kind": "train", "step", "loss" (mean over the
        interval), "lr", "sequences_per_s"}; after each mask update {"kind": "mask", ...}.
        A runner calls this in chunks to interleave evaluation and checkpoints.
        """
        until = self.total_steps if until_step is None else until_step
        if until > self.total_steps:
            raise ValueError(f"until_step={until} is past total_steps={self.total_steps}")
        started = time.perf_counter()  # sequences/s count time inside train() only
        while self.step < until:
            mask_metrics = self.train_step()
            if mask_metrics is not None:
                self.check_finite()  # a mask update syncs anyway: no NaN reaches the log
                if callback is not None:
                    callback(mask_metrics)
            if self.step % self.log_every == 0:
                self.check_finite()  # rides on the sync the loss read-back makes anyway
                self._train_seconds += time.perf_counter() - started
                metrics = self._interval_metrics()
                started = time.perf_counter()
                if callback is not None:
                    callback(metrics)
        self._train_seconds += time.perf_counter() - started
        self.check_finite()

    def _interval_metrics(self) -> dict:
        steps = self.step - self._interval_start
        loss = self._loss_sum.item() / max(steps, 1)  # the one sync per log interval
        elapsed = self._train_seconds  # training only: evaluations between are not counted
        self._loss_sum.zero_()
        self._train_seconds = 0.0
        self._interval_start = self.step
        return {"kind": "train", "step": self.step, "loss": loss,
                "lr": self.scheduler.get_last_lr()[0],
                "sequences_per_s": steps * self.sequences_per_step / max(elapsed, 1e-9)}

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "sampler": self.sampler.state_dict(),
               "method": self.method_generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT, "method": self.method.name, "tasks": self.tasks,
            "model_config": dataclasses.asdict(self.config), "step": self.step,
            "device_type": self.device.type, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "masks": None if self.masks is None else self.masks.values,
            "method_state": self.method.state_dict(), "rng": rng,
            # the open log interval, so a resumed run's next loss record covers it whole
            "log_interval": {"start": self._interval_start, "loss_sum": self._loss_sum.clone()},
        }

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write atomically and durably (a reader sees the old checkpoint or the new one,
        never half), and never with non-finite numbers: the last good one is kept."""
        self.check_finite()
        state = self.state_dict()
        if not _all_finite(state):
            raise Diverged(f"non-finite weights or optimiser state at step {self.step}: "
                           f"checkpoint not written, {path} keeps the last good one")
        try:
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        except (OSError, RuntimeError) as err:  # torch reports a short write as RuntimeError
            free = shutil.disk_usage(Path(path).parent).free / 1e6
            reason = err.strerror if isinstance(err, OSError) and err.strerror else (
                f"the write stopped short (disk full or a file size limit?); "
                f"{free:.1f} MB free there")
            raise UserError(f"cannot write checkpoint {path}: {reason}") from None

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore everything, so training continues exactly where the checkpoint was made."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (OSError, RuntimeError, EOFError) as err:
            raise UserError(f"cannot read checkpoint {path}: {err}") from err
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"checkpoint {path} has format {state.get('format')!r}, "
                            f"expected {CHECKPOINT_FORMAT}")
        mine = {"method": self.method.name, "tasks": self.tasks,
                "model_config": dataclasses.asdict(self.config)}
        for key, value in mine.items():
            if state[key] != value:
                raise UserError(f"checkpoint {path} was made with {key}={state[key]!r}, "
                                f"this run has {value!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.masks is not None:
            self.masks.values.copy_(state["masks"])
            self.masks.refresh()
        self.method.load_state_dict(state["method_state"])
        self.step = state["step"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        if state["device_type"] == self.device.type:
            self.sampler.load_state_dict(rng["sampler"])
            self.method_generator.set_state(rng["method"].cpu())
            if "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        else:
            warnings.warn(f"checkpoint {path} was made on {state['device_type']}, not "
                          f"{self.device.type}: random streams restart, training continues "
                          "but not bit-for-bit", stacklevel=2)
        self._loss_sum.copy_(state["log_interval"]["loss_sum"])
        self._interval_start = state["log_interval"]["start"]


def tensor_digest(tensors) -> str:
    """A short hash of the bytes of ``tensors`` (on any device), in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _all_finite(state) -> bool:
    """Every floating-point tensor in a (nested) state dict is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_all_finite(v) for v in state)
    return not isinstance(state, float) or math.isfinite(state)


class _LinearWarmup:
    """lr factor min((s + 1) / warmup, 1), as Decision Transformer / HarmoDT schedule it.

    A class (not a lambda) so the scheduler's state dict stays picklable and small.
    """

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min((step + 1) / self.warmup_steps, 1.0)
