"""Cross-check mtrl-bench's evaluator against Meta-World's own ``metaworld.evaluation.evaluation``.

Two deterministic policies go through both evaluators on identical goals (goal g of a task =
``suites.make_env(task, g)`` in both): Meta-World's scripted expert, and a small Prompt-DT
trained briefly (with HarmoDT's per-task masks) on a freshly generated dataset. Per task the
success rates must be identical, and every episode's return must match Meta-World's (which
ends episodes at the first success, so it is compared with our return up to that step).

The Prompt-DT runs in float64 here. Meta-World's evaluator feeds the policy one environment
per task, ours all goals at once; in float32 the batch shape changes results at rounding level
(BLAS blocking, ~3e-8 on the actions), which a trained policy amplifies into different
trajectories. In float64 the float32 actions that reach the environments are identical.

    python tools/crosscheck_eval.py                       # 2 tasks x 5 goals x 500 steps
    python tools/crosscheck_eval.py --tasks reach push --goals 10 --train-steps 500

Exit status 0 when everything agrees, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
from tabulate import tabulate

from mtrl_bench.suites import MAX_EPISODE_STEPS


def compare(name: str, result, reference, rtol: float = 1e-5) -> bool:
    """Print one row per task; True when success and every episode's return agree."""
    success, returns = reference
    rows, ok = [], True
    for task in result.tasks:
        episodes = [e for e in result.episodes if e.task == task]
        ours = [e.return_to_first_success if e.success else e.episode_return for e in episodes]
        theirs = returns[task]
        same_returns = np.allclose(ours, theirs, rtol=rtol, atol=0.0)
        same_success = result.success[task] == success[task]
        ok &= bool(same_returns and same_success)
        rows.append([task, f"{result.success[task]:.2f}", f"{success[task]:.2f}",
                     f"{np.max(np.abs(np.subtract(ours, theirs))):.2e}",
                     " ".join("-" if e.first_success_step is None else str(e.first_success_step)
                              for e in episodes),
                     "yes" if same_success and same_returns else "NO"])
    print(f"\n{name}")
    print(tabulate(rows, headers=["task", "success (ours)", "success (Meta-World)",
                                  "max |return diff|", "first success step per goal", "agree"]))
    return ok


def train_small_model(tasks: list[str], episodes: int, episode_length: int, steps: int,
                      method: str, seed: int):
    """A tiny Prompt-DT trained for a few hundred steps on a fresh near-optimal dataset."""
    from mtrl_bench.data.generation import ensure_suite_dataset
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as data_dir:
        datasets = ensure_suite_dataset(tasks, "near-optimal", data_dir=data_dir,
                                        episodes=episodes, seed=seed,
                                        episode_length=episode_length, progress=False)
    config = PromptDTConfig(n_layer=2, n_embd=64, n_head=2, n_inner=128, context_len=10,
                            prompt_len=5)
    trainer = Trainer(datasets, method, total_steps=steps, batch_size=16, learning_rate=1e-3,
                      warmup_steps=20, device="cpu", seed=seed, model_config=config,
                      log_every=max(1, steps // 4))
    trainer.train(callback=lambda m: m["kind"] == "train" and print(
        f"  train step {m['step']}: loss {m['loss']:.4f}"))
    return trainer, datasets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["reach-v3", "button-press-topdown-v3"])
    parser.add_argument("--goals", type=int, default=5, help="goal indices 0..N-1")
    parser.add_argument("--max-steps", type=int, default=MAX_EPISODE_STEPS)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=40, help="dataset episodes per task")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--method", default="harmodt-f", help="training method (masks)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from mtrl_bench.evaluation.agents import DecisionTransformerAgent, ScriptedExpertAgent
    from mtrl_bench.evaluation.crosscheck import metaworld_reference_evaluation
    from mtrl_bench.evaluation.evaluator import Evaluator
    from mtrl_bench.suites import normalize_task_name

    tasks = [normalize_task_name(t) for t in args.tasks]
    goals = list(range(args.goals))
    print(f"tasks {tasks}, goals {goals}, {args.max_steps} steps per episode, "
          f"torch {torch.__version__}")
    print(f"training a small Prompt-DT ({args.method}, {args.train_steps} steps) ...")
    trainer, datasets = train_small_model(tasks, args.episodes, args.max_steps, args.train_steps,
                                          args.method, args.seed)

    model = trainer.model.double()  # see the module docstring: float32 depends on batch shape

    def dt_agent():
        return DecisionTransformerAgent.from_datasets(model, datasets, tasks, masks=trainer.masks)

    agents = [("scripted expert", lambda: ScriptedExpertAgent(tasks)),
              (f"Prompt-DT trained {args.train_steps} steps ({args.method})", dt_agent)]
    ok = True
    with Evaluator(tasks, goal_indices=goals, max_steps=args.max_steps,
                   workers=args.workers) as evaluator:
        for name, make_agent in agents:
            start = time.perf_counter()
            result = evaluator.evaluate(make_agent())
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            reference = metaworld_reference_evaluation(make_agent(), tasks, goals, args.max_steps)
            theirs_s = time.perf_counter() - start
            ok &= compare(name, result, reference)
            print(f"time: ours {ours_s:.1f} s, Meta-World's evaluator {theirs_s:.1f} s")
    print("\nALL AGREE" if ok else "\nMISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
