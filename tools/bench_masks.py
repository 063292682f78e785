"""Mask-update benchmark: one periodic update of each masking method over N tasks x P entries.

The masks start from each method's real initial masks (random ERK over the segments of
the chosen model, so P is the model's maskable count: 4,738,560 for ``paper``); the
per-task gradients are synthetic (a shared direction plus task noise, with log-normal
per-entry magnitudes, so the score distributions have tails and the IQR thresholds
select entries). The update runs at t = T/2, where β_t = β_min (SoCo-DT selects the
most) and HarmoDT's k = k_max. Timings are wall-clock per update after warm-up, with
CUDA synchronised; the masks are reset before every repeat. The paper protocol makes
2,000 updates on MT50, so the goal on one H100 is < 150 ms per SoCo-DT update.

Usage: python tools/bench_masks.py [--model paper|small|tiny] [--tasks 50]
       [--device auto|cpu|cuda] [--methods socodt harmodt-f ...] [--repeats 5] [--json F]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

from mtrl_bench.config import CONFIG_DIR, parse_gin_files
from mtrl_bench.errors import UserError
from mtrl_bench.io import atomic_write_json
from mtrl_bench.method import (
    MaskUpdateContext,
    Method,
    build_method,
    registered_methods,
)
from mtrl_bench.training.masking import MaskSegment
from mtrl_bench.training.model import DecisionTransformer, PromptDTConfig

DEFAULT_METHODS = ("socodt", "socodt-hard", "socodt-fixed", "socodt-nomag", "harmodt-f")


def synthetic_task_grads(num_tasks: int, size: int, device: torch.device,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, P) gradients and (N,) losses with a shared direction and heavy-ish tails."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device)

    magnitude = randn(size).mul_(0.7).exp_().mul_(1e-3)  # per-entry scale, log-normal
    grads = randn(num_tasks, size).add_(randn(size), alpha=0.5).mul_(magnitude)
    losses = torch.rand(num_tasks, generator=generator, device=device) * 0.09 + 0.01
    return grads, losses


def time_mask_update(
    method: Method, num_tasks: int, segments: list[MaskSegment], theta: torch.Tensor,
    *, repeats: int = 5, warmup: int = 2, total_steps: int = 20_000, seed: int = 0,
) -> dict:
    """Median/min milliseconds of ``method.update_masks`` and its peak extra CUDA memory."""
    device = theta.device
    generator = torch.Generator(device=device).manual_seed(seed)
    initial = method.initial_masks(num_tasks, segments, theta, generator)
    grads, losses = synthetic_task_grads(num_tasks, theta.numel(), device, generator)
    masks = torch.empty_like(initial)
    cuda = device.type == "cuda"
    times, metrics, peak = [], {}, None
    for i in range(warmup + repeats):
        masks.copy_(initial)
        ctx = MaskUpdateContext(
            step=total_steps // 2, total_steps=total_steps, masks=masks, task_grads=grads,
            task_losses=losses, theta=theta, segments=segments, generator=generator)
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = method.update_masks(ctx)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            if cuda:
                peak = max(peak or 0, torch.cuda.max_memory_allocated() - base)
    ms = [1e3 * t for t in times]

    def mean(key):
        return statistics.fmean(metrics[key]) if key in metrics else float("nan")

    return {"median_ms": statistics.median(ms), "min_ms": min(ms),
            "peak_extra_gib": None if peak is None else peak / 2**30,
            "conflicted_per_task": mean("conflicted"), "recovered_per_task": mean("recovered")}


def load_method_config(method: str, model: str) -> None:
    """The model preset's and the method's .gin files, as a run would see them."""
    files = [CONFIG_DIR / "model" / f"{model}.gin", CONFIG_DIR / "methods" / f"{method}.gin"]
    parse_gin_files([f for f in files if f.exists()], skip_unknown=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="paper", help="model preset in configs/model/")
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"default: those of {', '.join(DEFAULT_METHODS)} registered")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures here (rewritten after every method)")
    args = parser.parse_args(argv)
    try:
        if not (CONFIG_DIR / "model" / f"{args.model}.gin").exists():
            valid = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.gin"))
            raise UserError(f"unknown model preset {args.model!r}; valid: {', '.join(valid)}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but CUDA is not available here")
        device = torch.device(args.device if args.device != "auto" else
                              "cuda" if torch.cuda.is_available() else "cpu")
        methods = args.methods or [m for m in DEFAULT_METHODS if m in registered_methods()]
        rows, entries = [], 0
        for method in methods:
            load_method_config(method, args.model)
            instance = build_method(method)
            model = DecisionTransformer(PromptDTConfig())
            theta = model.maskable_flat().to(device)
            entries = model.num_maskable
            result = time_mask_update(instance, args.tasks, model.mask_segments, theta,
                                      repeats=args.repeats, warmup=args.warmup)
            rows.append({"method": method, **result})
            del model, theta
            if args.json is not None:
                atomic_write_json(args.json, {"model": args.model, "tasks": args.tasks,
                                              "entries": entries, "device": str(device),
                                              "methods": rows})
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu ({torch.get_num_threads()} threads)")
    print(f"mask update, model {args.model}: {args.tasks} tasks x {entries} "
          f"entries on {name}, torch {torch.__version__}")
    print(tabulate(rows, headers="keys", floatfmt=".1f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
