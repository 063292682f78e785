"""Dataset-generation benchmark: the generator's env-steps/s against raw Meta-World stepping.

One run measures, with the same number of worker processes and the same job split:

1. the generator (``mtrl_bench.data.generation.generate_suite_dataset``) end to end, into a
   fresh folder: process start, goal construction, rollouts, transfer, compression and
   atomic writes;
2. "raw, same work": each worker steps the same episodes with the actions the generator
   stored and calls the scripted expert exactly where the generator did, storing nothing.
   Same physics and expert cost, so generator/raw is the generator's own efficiency
   (the issue's goal: at least 0.8);
3. "raw, expert only": the scripted experts without any noise (the plain stepping rate of
   the machine; noisy and random actions step at a different speed, so this is context).

Usage: python tools/bench_datagen.py [--suite mt5] [--episodes 100] [--workers W] [--repeat R]
Exit status 1 when generator/raw is below ``--goal`` (0.8).
A smaller --episodes is extrapolated linearly to 100 episodes per task (and says so). With
--repeat the three measurements alternate R times and the fastest of each is kept, which
damps interference from other programs on a shared machine; steps per CPU-second (worker
and parent CPU time together) is printed next to the wall-clock rate for the same reason.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mtrl_bench.data import generation as datagen
from mtrl_bench.data.dataset import load_suite_dataset
from mtrl_bench.data.generation import chunk_jobs, default_workers, generate_suite_dataset
from mtrl_bench.suites import MAX_EPISODE_STEPS, resolve_suite


def replay_chunk(item: tuple[datagen.ChunkJob, np.ndarray]) -> int:
    """Step the stored actions; call the expert on the steps where the generator did."""
    job, actions = item
    env, policy, goals = datagen.task_runtime(job.task)
    key = datagen.task_key(job.task)
    epsilon, _ = datagen.ladder(np.arange(job.start, job.stop), job.ladder_episodes)
    with datagen.quiet_experts():
        for i, k in enumerate(range(job.start, job.stop)):
            replace = np.random.default_rng([job.seed, key, k]).random(job.episode_length)
            replace = replace < epsilon[i]
            env.set_task(goals[k % len(goals)])
            obs, _ = env.reset()
            for t in range(job.episode_length):
                if not replace[t]:
                    policy.get_action(obs)
                obs, *_ = env.step(actions[i, t])
    return (job.stop - job.start) * job.episode_length


def expert_chunk(job: datagen.ChunkJob) -> int:
    """The scripted expert alone, no noise and no storage."""
    env, policy, goals = datagen.task_runtime(job.task)
    with datagen.quiet_experts():
        for k in range(job.start, job.stop):
            env.set_task(goals[k % len(goals)])
            obs, _ = env.reset()
            for _ in range(job.episode_length):
                obs, *_ = env.step(np.clip(policy.get_action(obs), -1.0, 1.0))
    return (job.stop - job.start) * job.episode_length


def clocks() -> np.ndarray:
    """(wall seconds, CPU seconds of this process and its finished children)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return np.array([time.perf_counter(), cpu])


def timed_pool(function, items, workers: int) -> tuple[int, np.ndarray]:
    start = clocks()
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=datagen.init_worker) as pool:
        steps = sum(pool.imap_unordered(function, items))
        pool.close()
        pool.join()  # reaped workers count in RUSAGE_CHILDREN
    return steps, clocks() - start


def timed_generation(tasks, quality, episodes, length, workers) -> tuple[np.ndarray, dict, int]:
    """(wall, CPU) seconds to generate into a fresh folder, the loaded data, bytes on disk."""
    with tempfile.TemporaryDirectory() as tmp:
        start = clocks()
        generate_suite_dataset(tasks, quality, data_dir=Path(tmp), episodes=episodes,
                               episode_length=length, workers=workers, progress=False)
        seconds = clocks() - start
        datasets = load_suite_dataset(tasks, quality, data_dir=Path(tmp), episodes=episodes,
                                      episode_length=length)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*.npz"))
    return seconds, datasets, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="mt5")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per task")
    parser.add_argument("--episode-length", type=int, default=MAX_EPISODE_STEPS)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeat", type=int, default=1, help="keep the fastest of R runs")
    parser.add_argument("--goal", type=float, default=0.8,
                        help="exit status 1 when generator/raw (wall) is below this "
                             "(default: %(default)s; 0 never fails)")
    args = parser.parse_args()
    tasks, workers = resolve_suite(args.suite), args.workers
    quality, length = "near-optimal", args.episode_length
    print(f"{args.suite}: {len(tasks)} tasks x {args.episodes} episodes x {length} steps, "
          f"{workers} workers, {os.cpu_count()} CPUs, load average before "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    jobs = chunk_jobs(tasks, quality, args.episodes, 0, length, workers)
    steps = len(tasks) * args.episodes * length
    best = {name: np.full(2, np.inf) for name in ("generator", "raw, same work",
                                                   "raw, expert only")}
    for _ in range(args.repeat):
        seconds, datasets, size = timed_generation(tasks, quality, args.episodes, length,
                                                   workers)
        best["generator"] = np.minimum(best["generator"], seconds)
        items = [(job, datasets[job.task].actions[job.start:job.stop]) for job in jobs]
        replay_steps, seconds = timed_pool(replay_chunk, items, workers)
        best["raw, same work"] = np.minimum(best["raw, same work"], seconds)
        expert_steps, seconds = timed_pool(expert_chunk, jobs, workers)
        best["raw, expert only"] = np.minimum(best["raw, expert only"], seconds)
        assert replay_steps == expert_steps == steps
    rates = {name: steps / seconds for name, seconds in best.items()}
    print(f"{'':17s} {'steps/s':>8s} {'per CPU-s':>9s}  wall s")
    for name, (wall, cpu) in best.items():
        print(f"{name:17s} {steps / wall:8.0f} {steps / cpu:9.0f}  {wall:6.1f}")
    print(f"on disk: {size / steps:.0f} bytes/step")
    gen_rate, ratio = rates["generator"], rates["generator"] / rates["raw, same work"]
    print(f"generator / raw same work = {ratio[0]:.2f} wall, {ratio[1]:.2f} CPU "
          f"(goal >= {args.goal:.2f}); "
          f"generator / raw expert only = {gen_rate[0] / rates['raw, expert only'][0]:.2f} wall")
    scale = 100 / args.episodes
    label = "measured" if args.episodes == 100 else f"extrapolated x{scale:g} from {args.episodes}"
    print(f"{args.suite} at 100 episodes/task: {best['generator'][0] * scale:.0f} s ({label}); "
          f"load average after {os.getloadavg()[0]:.2f}")
    return 0 if ratio[0] >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
