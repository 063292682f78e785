"""Benchmark the evaluator: raw stepping rate, policy-in-the-loop rate, naive batch-1 loop.

One run on the current machine measures, in environment steps per second:

* ``evaluator + policy``: :class:`mtrl_bench.evaluation.Evaluator` rolling out a masked
  Prompt-DT (random init, per-task ERK masks at sparsity 0.2; model size from the flags,
  default = the paper's PromptDTConfig) on tasks x goals, one batched forward per step;
* ``raw stepping``: the same worker pool replaying those very actions (identical
  trajectories, no policy), and replaying scripted-expert actions (the data's motion);
* gymnasium ``AsyncVectorEnv`` replaying the policy's actions, one process per environment
  (gymnasium's design) and with the same number of processes each holding a shard;
* ``naive``: Prompt-DT-style sequential batch-1 rollouts (one env, one forward per step) on
  a subset of episodes, as the HarmoDT reference evaluates.

Goals (issue 5): evaluator >= 70% of raw stepping, >= 20x naive; full MT50 x 50 goals
(1.25M steps) under 5 minutes on the 16-core GPU host. Start-up (workers, environment
construction) is reported separately: a run pays it once.

    python tools/bench_eval.py --tasks 2 --goals 4 --max-steps 200          # small CPU run
    python tools/bench_eval.py --tasks 50 --goals 50 --device cuda --bf16   # the GPU host
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


class RecordingAgent:
    """Passes everything to ``agent`` and keeps the actions it returned, in call order."""

    def __init__(self, agent):
        self.agent, self.actions = agent, []

    def reset(self, num_tasks, num_goals):
        self.agent.reset(num_tasks, num_goals)

    def restart(self, done):
        self.agent.restart(done)

    def act(self, observations):
        actions = self.agent.act(observations)
        self.actions.append(actions)
        return actions

    def observe(self, rewards):
        self.agent.observe(rewards)


class ReplayAgent:
    """Returns recorded actions, step by step: stepping cost without any policy."""

    def __init__(self, actions):
        self.actions, self.step = actions, 0

    def reset(self, num_tasks, num_goals):
        self.step = 0

    def restart(self, done):
        pass

    def act(self, observations):
        self.step += 1
        return self.actions[self.step - 1]

    def observe(self, rewards):
        pass


def _shard_env_class():
    import gymnasium as gym

    from mtrl_bench.suites import make_env

    class ShardEnv(gym.Env):
        """Several Meta-World envs as one gym.Env, so AsyncVectorEnv can run one shard per
        process; rewards and success flags ride along in the observation."""

        def __init__(self, pairs):
            self.envs = [make_env(task, goal) for task, goal in pairs]
            s = len(self.envs)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (s, 41), np.float64)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (s, 4), np.float32)

        def reset(self, *, seed=None, options=None):
            obs = np.zeros((len(self.envs), 41))
            obs[:, :39] = [env.reset()[0] for env in self.envs]
            return obs, {}

        def step(self, actions):
            out = np.zeros((len(self.envs), 41))
            for i, (env, action) in enumerate(zip(self.envs, actions)):
                o, r, _, _, info = env.step(action)
                out[i, :39], out[i, 39], out[i, 40] = o, r, info["success"]
            return out, 0.0, False, False, {}

    return ShardEnv


def bench_async(pairs, actions, processes: int | None):
    """(steps/s, start-up s) of AsyncVectorEnv replaying ``actions`` (list of (N, G, 4)):
    one process per environment (``processes`` None) or ``processes`` equal shards."""
    import gymnasium as gym

    from mtrl_bench.suites import make_env

    start = time.perf_counter()
    if processes is None:
        fns = [lambda t=t, g=g: make_env(t, g) for t, g in pairs]
        order = np.arange(len(pairs))
    else:  # shard w = pairs w, w + P, ... (as the pool stripes its slots)
        shard_env = _shard_env_class()
        fns = [lambda w=w: shard_env(pairs[w::processes]) for w in range(processes)]
        order = np.concatenate([np.arange(len(pairs))[w::processes] for w in range(processes)])
    envs = gym.vector.AsyncVectorEnv(fns, shared_memory=True)
    try:
        envs.reset()
        startup = time.perf_counter() - start
        start = time.perf_counter()
        for step_actions in actions:
            flat = step_actions.reshape(-1, 4)[order]
            envs.step(flat if processes is None else flat.reshape(processes, -1, 4))
        elapsed = time.perf_counter() - start
    finally:
        envs.close()
    return len(pairs) * len(actions) / elapsed, startup


def naive_rollouts(model, masks, prompts, task_index, task, goals, max_steps, autocast):
    """Sequential batch-1 rollouts (one env, one forward per step); returns steps/s."""
    from mtrl_bench.evaluation import DecisionTransformerAgent
    from mtrl_bench.suites import make_env

    agent = DecisionTransformerAgent(model, masks, [prompts[task_index]], np.zeros((1, 39)),
                                     np.ones((1, 39)), np.array([4500.0]),
                                     task_ids=[task_index], autocast_dtype=autocast)
    envs = [make_env(task, g) for g in goals]
    start = time.perf_counter()
    for env in envs:
        obs, _ = env.reset()
        agent.reset(1, 1)
        for _ in range(max_steps):
            action = agent.act(obs[None, None])[0, 0]
            obs, reward, _, _, _ = env.step(action)
            agent.observe(np.array([[reward]]))
    return len(goals) * max_steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    from mtrl_bench.model import PromptDTConfig

    defaults = PromptDTConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=2, help="first K tasks of mt50")
    p.add_argument("--goals", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--naive-episodes", type=int, default=1)
    p.add_argument("--no-async", action="store_true", help="skip the AsyncVectorEnv runs")
    for name in ("n_layer", "n_embd", "n_head", "n_inner", "context_len", "prompt_len"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    args = p.parse_args(argv)

    import torch

    from mtrl_bench.evaluation import DecisionTransformerAgent, Evaluator, ScriptedExpertAgent
    from mtrl_bench.mask_init import erk_random_masks
    from mtrl_bench.masking import TaskMasks
    from mtrl_bench.model import PromptDT
    from mtrl_bench.suites import MT50
    from mtrl_bench.trainer import resolve_device

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = resolve_device(args.device)
    tasks, goals = MT50[: args.tasks], list(range(args.goals))
    n, g = len(tasks), len(goals)
    workers = args.workers or os.cpu_count()
    cfg = PromptDTConfig(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                         n_inner=args.n_inner, context_len=args.context_len,
                         prompt_len=args.prompt_len)
    torch.manual_seed(0)
    model = PromptDT(cfg).to(device)
    masks = TaskMasks(erk_random_masks(n, model.mask_segments, 0.2,
                                       torch.Generator().manual_seed(0), "cpu").to(device),
                      model.mask_segments)
    k = cfg.prompt_len
    prompts = [{"states": np.zeros((k, 39), np.float32), "actions": np.zeros((k, 4), np.float32),
                "returns_to_go": np.full((k, 1), 4500.0, np.float32),
                "timesteps": np.arange(k)} for _ in tasks]
    autocast = torch.bfloat16 if args.bf16 else None
    policy = RecordingAgent(DecisionTransformerAgent(
        model, masks, prompts, np.zeros((n, 39)), np.ones((n, 39)), np.full(n, 4500.0),
        device=device, autocast_dtype=autocast))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
          f"({cfg.n_layer} layers, {cfg.n_embd} dim, K={cfg.context_len}, K'={cfg.prompt_len})"
          f"{', bf16' if args.bf16 else ''}")
    print(f"work: {n} tasks x {g} goals x {args.max_steps} steps = "
          f"{n * g * args.max_steps} env steps, {workers} worker processes")

    rows = []
    start = time.perf_counter()
    with Evaluator(tasks, goal_indices=goals, max_steps=args.max_steps, workers=workers,
                   max_envs=n * g) as evaluator:
        startup = time.perf_counter() - start
        expert = RecordingAgent(ScriptedExpertAgent(tasks))
        evaluator.evaluate(expert)
        result = evaluator.evaluate(policy)
        policy_rate = result.env_steps / result.wall_time_s
        replay = evaluator.evaluate(ReplayAgent(policy.actions))
        raw_rate = replay.env_steps / replay.wall_time_s
        assert replay.episodes == result.episodes, "replay must reproduce the trajectories"
        expert_replay = evaluator.evaluate(ReplayAgent(expert.actions))
        rows += [("raw stepping, pool, policy's actions replayed", raw_rate, startup),
                 ("raw stepping, pool, scripted-expert actions replayed",
                  expert_replay.env_steps / expert_replay.wall_time_s, None),
                 ("evaluator + policy (one batched forward per step)", policy_rate, None)]
    pairs = [(t, goal) for t in tasks for goal in goals]
    if not args.no_async:
        rate, up = bench_async(pairs, policy.actions, None)
        rows.append((f"AsyncVectorEnv, {len(pairs)} processes (one per env)", rate, up))
        if len(pairs) % workers == 0:
            rate, up = bench_async(pairs, policy.actions, workers)
            rows.append((f"AsyncVectorEnv, {workers} processes x shard", rate, up))
    naive = naive_rollouts(model, masks, prompts, 0, tasks[0],
                           goals[: args.naive_episodes], args.max_steps, autocast)
    rows.append((f"naive sequential batch-1 ({args.naive_episodes} episode(s) of {tasks[0]})",
                 naive, None))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'':{width}}  env steps/s  start-up s")
    for name, rate, up in rows:
        print(f"{name:{width}}  {rate:11.0f}  {'' if up is None else f'{up:10.1f}'}")
    print(f"\nevaluator / raw stepping (same actions): {policy_rate / raw_rate:6.1%}"
          "  (goal >= 70%)")
    print(f"evaluator / naive batch-1:               {policy_rate / naive:6.1f}x"
          " (goal >= 20x)")
    full = 50 * 50 * 500
    print(f"MT50 x 50 goals ({full} steps) at this rate: {full / policy_rate / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
