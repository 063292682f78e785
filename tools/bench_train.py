"""Training-throughput benchmark: batched masked trainer vs the HarmoDT reference loop.

Prints, for N tasks and a model preset on the current device, in one run:

* sequences/s of the batched trainer with HarmoDT-F masks (mask updates included, every
  4000 sequences as in the paper protocol) and without masks (Prompt-DT);
* sequences/s of the ``reference`` loop (HarmoDT's shape: one task per iteration, batch
  8, masked weights swapped in and out, float32, loss read back every iteration);
* their ratio, the time of one HarmoDT mask update (at k = k_max) and peak memory;
* sequences/s of the gradient-surgery methods (PCGrad, CAGrad: per-task gradients of every
  parameter each step) and the memory those gradients take (N x all parameters, float32);
  with ``--aggregators`` also every torchjd aggregator method (methods/aggregators.py: the
  same per-task gradients, then their aggregator), each as a multiple of PCGrad's step time.

Data are synthetic episodes of the real shapes (39-dim states, 4-dim actions, 500 steps):
throughput does not depend on their values. Goals on one H100 with ``--preset paper
--tasks 50 --bf16``: >= 35,000 sequences/s with masks (target 60,000), >= 70x the
reference loop, a HarmoDT mask update under 50 ms and a TAMU update under 150 ms.
``--json FILE`` writes the figures for tools/gpu_report.py.

``--count-ops`` measures no time: it counts the operator calls of one training step
(forward + backward + gradient clipping + optimiser, no mask update) of each method, a
proxy for the host overhead and kernel launches of a step that any CPU can take
deterministically (see :func:`count_step_ops`).

    python tools/bench_train.py --preset paper --tasks 50 --batch 8 --device cuda --bf16
    python tools/bench_train.py --preset tiny --tasks 5 --device cpu --steps 30
    python tools/bench_train.py --preset paper --tasks 50 --batch 8 --device cpu --count-ops
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import itertools
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtrl_bench.config import CONFIG_DIR, parse_gin_files
from mtrl_bench.data.dataset import TaskDataset
from mtrl_bench.io import atomic_write_json
from mtrl_bench.method import build_method
from mtrl_bench.suites import ACTION_DIM, MAX_EPISODE_STEPS, OBS_DIM
from mtrl_bench.training.model import DecisionTransformer, PromptDTConfig
from mtrl_bench.training.trainer import Trainer, masked_action_loss, resolve_device

MASK_UPDATE_SEQUENCES = 4000  # HarmoDT: every 500 iterations of 8 sequences


def synthetic_datasets(num_tasks: int, episodes: int, length: int = MAX_EPISODE_STEPS,
                       seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(num_tasks):
        out[f"task-{i}"] = TaskDataset(
            task=f"task-{i}",
            observations=rng.normal(size=(episodes, length, OBS_DIM)).astype(np.float32),
            actions=rng.uniform(-1, 1, size=(episodes, length, ACTION_DIM)).astype(np.float32),
            rewards=rng.uniform(0, 10, size=(episodes, length)).astype(np.float32),
            successes=rng.random((episodes, length)) < 0.01,
            goal_index=np.arange(episodes) % 50,
            epsilon=np.zeros(episodes, np.float32), sigma=np.zeros(episodes, np.float32),
            meta={"synthetic": True},
        )
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds for ``repeats`` calls of ``fn`` (device work included)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return time.perf_counter() - start


def make_trainer(datasets, method: str, args, bf16: bool) -> Trainer:
    n = len(datasets)
    interval = max(1, round(MASK_UPDATE_SEQUENCES / (n * args.batch)))
    return Trainer(datasets, build_method(method, update_interval=interval), total_steps=10**6,
                   warmup_steps=100,
                   batch_size=args.batch, device=args.device, bf16=bf16, compile=args.compile,
                   log_every=10**9, seed=0)


def bench_batched(datasets, method: str, args) -> dict:
    trainer = make_trainer(datasets, method, args, args.bf16)
    device = trainer.device
    warmup = args.warmup
    if trainer.masks is not None:  # through the first mask update (at update_interval): a
        # compiled model has then compiled its variants with and without gradient capture
        warmup = max(warmup, trainer.method.update_interval + 2)
    trainer.train(warmup)
    reset_peak(device)
    seconds = timed(trainer.train_step, args.steps, device)
    out = {"sequences_per_s": args.steps * trainer.sequences_per_step / seconds,
           "step_ms": 1000 * seconds / args.steps, "peak_mib": peak_mib(device),
           "updates_in_window": sum(trainer.method.wants_update(s) for s in
                                    range(trainer.step - args.steps, trainer.step))}
    if trainer.masks is not None:
        trainer.step = trainer.total_steps // 2  # k = k_max: the most expensive update
        batch = trainer.sampler.sample()
        losses = trainer.loss_and_backward(batch, capture=True)
        grads = trainer.masks.capture
        trainer.masks.stop_capture()
        times = []
        for _ in range(args.update_repeats):
            times.append(timed(lambda: trainer.update_masks(grads, losses), 1, device))
        out["mask_update_ms"] = 1000 * statistics.median(times[1:] or times)
        out["num_maskable"] = trainer.model.num_maskable
    return out


def reference_iteration(trainer: Trainer, task: int) -> float:
    """One iteration shaped like the HarmoDT reference loop, on the batched trainer's model,
    masks and optimiser: train ONE task on ``batch_size`` sequences: copy the state dict,
    write θ ⊙ M_i into the model, forward/backward in float32, clip, mask the gradient,
    step, put the saved values back into the entries task i does not use, and read the loss
    back to the host, as the reference does every iteration."""
    batch = trainer.sampler.sample(tasks=trainer.sampler.all_tasks[task:task + 1],
                                   with_prompt=trainer.config.prompted)
    saved = copy.deepcopy(trainer.model.state_dict())
    named = trainer.model.maskable_parameters()
    row = None if trainer.masks is None else [
        trainer.masks.values[task, seg.offset:seg.stop].view(seg.shape) == 1
        for seg in trainer.model.mask_segments
    ]
    if row is not None:
        with torch.no_grad():
            for (_, param), keep in zip(named, row):
                param.mul_(keep)
    prompt = batch.get("prompt") if trainer.config.prompted else None
    pred = trainer.model(batch["states"], batch["actions"], batch["returns_to_go"],
                         batch["timesteps"], batch["attention_mask"], prompt=prompt,
                         task_ids=batch["task_ids"])
    loss = masked_action_loss(pred, batch["actions"], batch["attention_mask"]).mean()
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.grad_clip)
    if row is not None:
        for (_, param), keep in zip(named, row):
            param.grad.mul_(keep)
    trainer.optimizer.step()
    trainer.scheduler.step()
    if row is not None:
        with torch.no_grad():
            for (name, param), keep in zip(named, row):
                param.copy_(torch.where(keep, param, saved[name]))
    return loss.item()


def bench_reference(datasets, args) -> dict:
    trainer = make_trainer(datasets, "harmodt-f", args, bf16=False)
    device = trainer.device
    tasks = itertools.cycle(range(trainer.num_tasks))  # round-robin, as the reference

    def iteration():
        return reference_iteration(trainer, next(tasks))

    for _ in range(min(args.warmup, 3) * len(datasets)):
        iteration()
    reset_peak(device)
    seconds = timed(iteration, args.reference_iterations, device)
    return {"sequences_per_s": args.reference_iterations * args.batch / seconds,
            "iteration_ms": 1000 * seconds / args.reference_iterations,
            "peak_mib": peak_mib(device)}


DEFAULT_METHODS = ("harmodt-f", "socodt", "promptdt", "pcgrad", "cagrad")


def profile_steps(datasets, method: str, args, steps: int) -> str:
    """torch.profiler table of ``steps`` training steps (after warm-up): where a step's time
    goes, for the report's "profile where a goal is missed"."""
    from torch.profiler import ProfilerActivity, profile

    trainer = make_trainer(datasets, method, args, args.bf16)
    trainer.train(args.warmup)
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    sync(trainer.device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
        sync(trainer.device)
    key = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=50)


class OpCounter(TorchDispatchMode):
    """Counts every aten operator call dispatched while active, by name, in two kinds:
    views (``OpOverload.is_view``: metadata only, no kernel, yet each one a dispatch) and
    the rest (what launches kernels, plus host-side scalars such as ``_local_scalar_dense``).

    A dispatch mode sees the ops below autograd and below composite decompositions, i.e.
    each kernel call the step really makes, the backward's included (the autograd engine
    runs CPU backward in this thread, under the mode), each op once. torch.profiler was the
    other choice: it records nested ranges (``aten::linear`` around ``aten::addmm``), so its
    counts depend on which nesting level one counts.
    """

    def __init__(self):
        super().__init__()
        self.views: collections.Counter = collections.Counter()
        self.compute: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        (self.views if func.is_view else self.compute)[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        views, compute = sum(self.views.values()), sum(self.compute.values())
        return {"total": views + compute, "views": views, "non_view": compute,
                "top": dict((self.views + self.compute).most_common(12))}


def count_step_ops(trainer: Trainer) -> dict:
    """Operator calls of one steady-state training step of ``trainer`` (after one step, so
    the optimiser's state exists; never a step that updates masks), and of one forward and
    backward with gradient capture (what a mask-update step adds before the update)."""
    trainer.train_step()
    while trainer.masks is not None and trainer.method.wants_update(trainer.step):
        trainer.train_step()
    with OpCounter() as step:
        trainer.train_step()
    out = {"step": step.summary()}
    if trainer.masks is not None and trainer.method.mask_update_needs_gradients:
        batch = trainer.sampler.sample(with_prompt=trainer.config.prompted)
        with OpCounter() as captured:
            trainer.loss_and_backward(batch, capture=True)
        trainer.masks.stop_capture()
        with OpCounter() as plain:
            trainer.loss_and_backward(batch)
        out["capture_extra"] = captured.summary()["total"] - plain.summary()["total"]
    return out


def count_ops(datasets, methods, args) -> dict:
    """{method: count_step_ops(...)} and a printed table."""
    out = {}
    print(f"\noperator calls per training step (aten ops dispatched: forward + backward + "
          f"clip + optimiser; TorchDispatchMode):\n{'':<14}{'total':>8}{'non-view':>10}"
          f"{'views':>8}{'capture adds':>14}  most called")
    for method in methods:
        counts = count_step_ops(make_trainer(datasets, method, args, args.bf16))
        out[method] = counts
        step = counts["step"]
        top = ", ".join(f"{name} {n}" for name, n in list(step["top"].items())[:6])
        extra = counts.get("capture_extra")
        print(f"{method:<14}{step['total']:>8}{step['non_view']:>10}{step['views']:>8}"
              f"{'' if extra is None else extra:>14}  {top}", flush=True)
    return out


def aggregator_methods() -> list[str]:
    """The registered torchjd aggregator methods, in registration order."""
    from mtrl_bench.methods.aggregators import TorchJDAggregator

    from mtrl_bench.method import registered_methods

    return [name for name, cls in registered_methods().items()
            if issubclass(cls, TorchJDAggregator)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("paper", "small", "tiny"), default="paper")
    parser.add_argument("--tasks", type=int, default=50, help="number of tasks (MT50: 50)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per task per step")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast on CUDA (default on)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help=f"batched methods to time (default: {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--aggregators", action="store_true",
                        help="also time PCGrad and every torchjd aggregator method "
                             "(methods/aggregators.py), each compared with PCGrad")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the HarmoDT-shaped reference loop (default on)")
    parser.add_argument("--steps", type=int, default=100, help="timed batched steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--reference-iterations", type=int, default=200)
    parser.add_argument("--update-repeats", type=int, default=6)
    parser.add_argument("--episodes", type=int, default=8, help="synthetic episodes per task")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--profile", nargs="*", metavar="METHOD", default=None,
                        help="print a torch.profiler table of 5 steps of these methods "
                             "(default when given bare: the first method)")
    parser.add_argument("--count-ops", action="store_true",
                        help="only count the operator calls of one training step per method "
                             "(no timing; deterministic, so any machine can take it)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures here (rewritten after every method, so "
                             "a run stopped midway keeps what it measured)")
    args = parser.parse_args(argv)
    if args.aggregators:
        args.methods = list(dict.fromkeys([*args.methods, "pcgrad", *aggregator_methods()]))
    if args.threads:
        torch.set_num_threads(args.threads)

    parse_gin_files([CONFIG_DIR / "model" / f"{args.preset}.gin"])
    device = resolve_device(args.device)
    args.device = str(device)
    datasets = synthetic_datasets(args.tasks, args.episodes)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({torch.get_num_threads()} threads)")
    cfg = PromptDTConfig()
    bf16 = args.bf16 and device.type == "cuda"
    print(f"device {name}; torch {torch.__version__}; preset {args.preset} "
          f"({cfg.n_layer} layers, {cfg.n_embd} dim, {cfg.n_head} heads); {args.tasks} tasks "
          f"x {args.batch} sequences; bf16 {'on' if bf16 else 'off'}"
          f"{'; compiled' if args.compile else ''}", flush=True)
    parameters = sum(p.numel() for p in DecisionTransformer(dataclasses.replace(
        cfg, num_tasks=args.tasks)).parameters())
    report = {"device": name, "torch": torch.__version__, "preset": args.preset,
              "tasks": args.tasks, "batch": args.batch, "bf16": bf16, "compile": args.compile,
              "parameters": parameters, "methods": {}}

    def save() -> None:
        if args.json is not None:
            atomic_write_json(args.json, report)

    if args.count_ops:
        report["op_counts"] = count_ops(datasets, args.methods, args)
        save()
        return 0

    for method in args.methods:
        report["methods"][method] = bench_batched(datasets, method, args)
        result = report["methods"][method]
        print(f"{method}: {result['sequences_per_s']:,.0f} sequences/s, "
              f"{result['step_ms']:.2f} ms/step, peak {result['peak_mib']:,.0f} MiB"
              + (f", mask update {result['mask_update_ms']:.1f} ms"
                 if "mask_update_ms" in result else ""), flush=True)
        save()
    if args.reference:
        report["reference"] = bench_reference(datasets, args)
        save()
    print_table(report, args)
    profiled = [] if args.profile is None else args.profile or args.methods[:1]
    for method in profiled:
        table = profile_steps(datasets, method, args, 5)
        report.setdefault("profiles", {})[method] = table
        save()
        print(f"\nprofile: 5 steps of {method}\n{table}")
    return 0


def print_table(report: dict, args) -> None:
    methods, reference = report["methods"], report.get("reference")
    rows = []
    for method, result in methods.items():
        detail = f"{result['step_ms']:.2f} ms/step"
        if "mask_update_ms" in result:
            detail += f" ({result['updates_in_window']} mask updates timed)"
        if "promptdt" in methods and method != "promptdt":
            detail += f", {result['step_ms'] / methods['promptdt']['step_ms']:.2f}x no masks"
        if "pcgrad" in methods and method in aggregator_methods():
            detail += f", {result['step_ms'] / methods['pcgrad']['step_ms']:.2f}x PCGrad"
        rows.append((method, result["sequences_per_s"], detail, result["peak_mib"]))
    if reference:
        rows.append(("reference loop (fp32)", reference["sequences_per_s"],
                     f"{reference['iteration_ms']:.2f} ms/iteration", reference["peak_mib"]))
    print(f"\n{'':<26}{'sequences/s':>14}  {'time':<48}{'peak MiB':>10}")
    for label, rate, detail, mem in rows:
        print(f"{label:<26}{rate:>14,.0f}  {detail:<48}{mem:>10,.0f}")
    interval = max(1, round(MASK_UPDATE_SEQUENCES / (args.tasks * args.batch)))
    for method, result in methods.items():
        if reference:
            print(f"{method} / reference loop: "
                  f"{result['sequences_per_s'] / reference['sequences_per_s']:.1f}x")
        if "mask_update_ms" in result:
            share = result["mask_update_ms"] / (result["mask_update_ms"]
                                                + interval * result["step_ms"])
            print(f"{method} mask update (k = k_max / t = T/2, {args.tasks} x "
                  f"{result['num_maskable']:,} entries): {result['mask_update_ms']:.1f} ms; "
                  f"with one every {interval} steps, {100 * share:.1f}% of training time")
    print(f"per-task gradients (PCGrad, CAGrad, torchjd aggregators): {args.tasks} x "
          f"{report['parameters']:,} "
          f"parameters x 4 bytes = {args.tasks * report['parameters'] * 4 / 2**20:,.0f} MiB a step")
    if report["device"].startswith("CPU"):
        print("(CPU peak memory is the process's peak resident set, cumulative over the run)")


if __name__ == "__main__":
    sys.exit(main())
