"""Benchmark the evaluator: raw stepping rate, policy-in-the-loop rate, naive batch-1 loop.

One run on the current machine measures, in environment steps per second:

* ``evaluator + policy``: :class:`mtrl_bench.evaluation.evaluator.Evaluator` rolling out a masked
  Prompt-DT (random init, per-task ERK masks at sparsity 0.2; model size from the flags,
  default = the paper's PromptDTConfig) on tasks x goals, one batched forward per step;
* ``raw stepping``: the same worker pool replaying those very actions (identical
  trajectories, no policy), and replaying scripted-expert actions (the data's motion);
* gymnasium ``AsyncVectorEnv`` replaying the policy's actions, one process per environment
  (gymnasium's design) and with the same number of processes each holding a shard;
* ``naive``: Prompt-DT-style sequential batch-1 rollouts (one env, one forward per step) on
  a subset of episodes, as the HarmoDT reference evaluates.

Every rate covers a whole episode's environment work (reset + steps; a Meta-World reset
costs about 25 steps). Goals (issue 5): evaluator >= 70% of raw stepping, >= 20x naive; full
MT50 x 50 goals (1.25M steps) under 5 minutes on the 16-core GPU host. Start-up (workers,
environment construction) is reported separately: a run pays it once. On a CPU-only machine
pass ``--torch-threads 1``: torch's spinning OpenMP threads otherwise fight the env workers.

    python tools/bench_eval.py --tasks 2 --goals 4 --max-steps 200          # small CPU run
    python tools/bench_eval.py --tasks 50 --goals 50 --device cuda --bf16   # the GPU host
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from mtrl_bench.data.external import HARMODT_TARGET_RETURN
from mtrl_bench.io import atomic_write_json
from mtrl_bench.suites import ACTION_DIM, MAX_EPISODE_STEPS, MT50, NUM_GOALS, OBS_DIM

OVERLAPPED = "evaluator + policy, halves overlapped (forward of one, steps of the other)"
NOT_OVERLAPPED = "evaluator + policy, not overlapped (one forward of all, then all steps)"


class RecordingAgent:
    """Passes everything to ``agent`` and keeps the actions it returned, in call order."""

    def __init__(self, agent):
        self.agent, self.calls = agent, []

    def reset(self, num_tasks, num_goals):
        self.shape = (num_tasks, num_goals)
        self.agent.reset(num_tasks, num_goals)

    def restart(self, done):
        self.agent.restart(done)

    def act(self, observations, columns=slice(None)):
        actions = self.agent.act(observations, columns)
        self.calls.append((columns, actions))
        return actions

    def observe(self, rewards, columns=slice(None)):
        self.agent.observe(rewards, columns)

    @property
    def actions(self) -> list[np.ndarray]:
        """One (N, G, 4) array per environment step, assembled from the calls' columns."""
        steps, full, filled = [], None, None
        for columns, actions in self.calls:
            if full is None:
                full = np.zeros((*self.shape, ACTION_DIM), np.float32)
                filled = np.zeros(self.shape[1], bool)
            full[:, columns] = actions
            filled[columns] = True
            if filled.all():
                steps.append(full)
                full = None
        return steps


class ReplayAgent:
    """Returns recorded actions, call by call: stepping cost without any policy."""

    def __init__(self, calls):
        self.calls, self.index = calls, 0

    def reset(self, num_tasks, num_goals):
        self.index = 0

    def restart(self, done):
        pass

    def act(self, observations, columns=slice(None)):
        self.index += 1
        return self.calls[self.index - 1][1]

    def observe(self, rewards, columns=slice(None)):
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
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (s, OBS_DIM + 2), np.float64)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (s, ACTION_DIM), np.float32)

        def reset(self, *, seed=None, options=None):
            obs = np.zeros((len(self.envs), OBS_DIM + 2))
            obs[:, :OBS_DIM] = [env.reset()[0] for env in self.envs]
            return obs, {}

        def step(self, actions):
            out = np.zeros((len(self.envs), OBS_DIM + 2))
            for i, (env, action) in enumerate(zip(self.envs, actions)):
                o, r, _, _, info = env.step(action)
                out[i, :OBS_DIM], out[i, OBS_DIM], out[i, OBS_DIM + 1] = o, r, info["success"]
            return out, 0.0, False, False, {}

    return ShardEnv


class AsyncVectorBaseline:
    """gymnasium's AsyncVectorEnv over ``pairs``: one process per environment (``processes``
    None, gymnasium's design) or ``processes`` equal shards striped like the pool's slots."""

    def __init__(self, pairs, processes: int | None):
        import gymnasium as gym

        from mtrl_bench.suites import make_env

        start = time.perf_counter()
        self.processes = processes
        if processes is None:
            fns = [lambda t=t, g=g: make_env(t, g) for t, g in pairs]
            self.order = np.arange(len(pairs))
        else:
            shard_env = _shard_env_class()
            fns = [lambda w=w: shard_env(pairs[w::processes]) for w in range(processes)]
            self.order = np.concatenate([np.arange(len(pairs))[w::processes]
                                         for w in range(processes)])
        self.envs = gym.vector.AsyncVectorEnv(fns, shared_memory=True)
        self.startup = time.perf_counter() - start

    def rate(self, actions) -> float:
        """Steps/s of one episode: reset, then step the recorded (N, G, 4) actions."""
        start = time.perf_counter()
        self.envs.reset()
        for step_actions in actions:
            flat = step_actions.reshape(-1, ACTION_DIM)[self.order]
            self.envs.step(flat if self.processes is None
                           else flat.reshape(self.processes, -1, ACTION_DIM))
        return len(self.order) * len(actions) / (time.perf_counter() - start)

    def close(self):
        self.envs.close()


def naive_rollouts(model, masks, prompts, task_index, task, goals, max_steps, autocast):
    """Sequential batch-1 rollouts (one env, one forward per step); returns steps/s."""
    from mtrl_bench.evaluation.agents import DecisionTransformerAgent
    from mtrl_bench.suites import make_env

    agent = DecisionTransformerAgent(model, masks, [prompts[task_index]], np.zeros((1, OBS_DIM)),
                                     np.ones((1, OBS_DIM)), np.array([HARMODT_TARGET_RETURN]),
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
    from mtrl_bench.training.model import PromptDTConfig

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
    p.add_argument("--lean", action="store_true",
                   help="time only the evaluator with the policy (one pass) and raw stepping "
                        "of its actions: 2 passes over the envs instead of 8, for big runs")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--repeat", type=int, default=3,
                   help="best of R interleaved runs per measurement")
    for name in ("n_layer", "n_embd", "n_head", "n_inner", "context_len", "prompt_len"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    args = p.parse_args(argv)

    import torch
    from mtrl_bench.methods.erk import erk_random_masks

    from mtrl_bench.evaluation.agents import DecisionTransformerAgent, ScriptedExpertAgent
    from mtrl_bench.evaluation.evaluator import Evaluator
    from mtrl_bench.training.masking import TaskMasks
    from mtrl_bench.training.model import DecisionTransformer
    from mtrl_bench.training.trainer import resolve_device

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
    model = DecisionTransformer(cfg).to(device)
    masks = TaskMasks(erk_random_masks(n, model.mask_segments, 0.2,
                                       torch.Generator().manual_seed(0), "cpu").to(device),
                      model.mask_segments, soft_values=False)  # binary, as HarmoDT's
    k = cfg.prompt_len
    prompts = [{"states": np.zeros((k, OBS_DIM), np.float32),
                "actions": np.zeros((k, ACTION_DIM), np.float32),
                "returns_to_go": np.full((k, 1), HARMODT_TARGET_RETURN, np.float32),
                "timesteps": np.arange(k)} for _ in tasks]
    autocast = torch.bfloat16 if args.bf16 else None
    policy = RecordingAgent(DecisionTransformerAgent(
        model, masks, prompts, np.zeros((n, OBS_DIM)), np.ones((n, OBS_DIM)),
        np.full(n, HARMODT_TARGET_RETURN),
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

    def evaluator_rate(agent, overlap=True):
        evaluator.overlap = overlap
        try:
            result = evaluator.evaluate(agent)
        finally:
            evaluator.overlap = True
        return result.env_steps / result.wall_time_s

    def pool_rate(actions):
        """The worker pool resetting and stepping recorded actions, nothing else in the loop."""
        evaluator.pool.set_goals(np.tile(goals, n))  # slot (task i, j) -> goal j, as evaluate
        start = time.perf_counter()
        evaluator.pool.reset()
        for step_actions in actions:
            evaluator.pool.step(step_actions.reshape(-1, ACTION_DIM))
        return n * g * len(actions) / (time.perf_counter() - start)

    pairs = [(t, goal) for t in tasks for goal in goals]
    baselines = {}
    start = time.perf_counter()
    with Evaluator(tasks, goal_indices=goals, max_steps=args.max_steps, workers=workers,
                   max_envs=n * g) as evaluator:
        startup = time.perf_counter() - start
        raw_name = f"raw stepping: pool of {evaluator.pool.num_workers}, policy's actions"
        if args.lean:  # one policy pass, timed as it comes: no warm-up pass, no repeats
            first = evaluator.evaluate(policy)
            actions = list(policy.actions)
            rates = {raw_name: pool_rate(actions),
                     OVERLAPPED: first.env_steps / first.wall_time_s}
        else:
            expert = RecordingAgent(ScriptedExpertAgent(tasks))
            evaluator.evaluate(expert)
            first = evaluator.evaluate(policy)
            actions, calls = list(policy.actions), list(policy.calls)
            assert evaluator.evaluate(ReplayAgent(calls)).episodes == first.episodes, \
                "replaying the policy's actions must reproduce its trajectories"
            if not args.no_async:
                baselines[f"AsyncVectorEnv, {len(pairs)} processes (one per env)"] = \
                    AsyncVectorBaseline(pairs, None)
                if len(pairs) % workers == 0:
                    baselines[f"AsyncVectorEnv, {workers} processes x shard"] = \
                        AsyncVectorBaseline(pairs, workers)
            measures = {
                raw_name: lambda: pool_rate(actions),
                "raw stepping: pool, scripted-expert actions": lambda: pool_rate(expert.actions),
                "evaluator, replaying the policy's actions (bookkeeping only)":
                    lambda: evaluator_rate(ReplayAgent(calls), overlap=True),
                OVERLAPPED: lambda: evaluator_rate(policy, overlap=True),
                NOT_OVERLAPPED: lambda: evaluator_rate(policy, overlap=False),
                **{name: (lambda b=b: b.rate(actions)) for name, b in baselines.items()},
            }
            rates = dict.fromkeys(measures, 0.0)
            try:  # interleaved, best of --repeat: the machine may be shared
                for _ in range(args.repeat):
                    for name, measure in measures.items():
                        rates[name] = max(rates[name], measure())
            finally:
                for baseline in baselines.values():
                    baseline.close()
    startups = {raw_name: startup, **{name: b.startup for name, b in baselines.items()}}
    rows = [(name, rate, startups.get(name)) for name, rate in rates.items()]
    raw_rate = rows[0][1]
    policy_rate = rates[OVERLAPPED]
    serial_rate = rates.get(NOT_OVERLAPPED)
    naive = naive_rollouts(model, masks, prompts, 0, tasks[0],
                           goals[: args.naive_episodes], args.max_steps, autocast)
    rows.append((f"naive sequential batch-1 ({args.naive_episodes} episode(s) of {tasks[0]})",
                 naive, None))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'':{width}}  env steps/s  start-up s")
    for name, rate, up in rows:
        print(f"{name:{width}}  {rate:11.0f}  {'' if up is None else f'{up:10.1f}'}")
    policy_ms = 1000 * n * g * (1 / policy_rate - 1 / raw_rate)
    print(f"\npolicy time per step ({n * g} envs): {policy_ms:.1f} ms")
    print(f"evaluator / raw stepping (same actions): {policy_rate / raw_rate:6.1%}"
          + ("" if serial_rate is None else f"  (not overlapped: {serial_rate / raw_rate:.1%})"))
    print(f"evaluator / naive batch-1:               {policy_rate / naive:6.1f}x"
          " (goal >= 20x)")
    full = len(MT50) * NUM_GOALS * MAX_EPISODE_STEPS
    print(f"MT50 x 50 goals ({full} steps) at this rate: {full / policy_rate / 60:.1f} min "
          "(linear extrapolation; measure it on the target machine)")
    if args.json is not None:
        atomic_write_json(args.json, {
            "tasks": n, "goals": g, "max_steps": args.max_steps, "workers": workers,
            "device": str(device), "bf16": args.bf16, "start_up_s": startup,
            "rates": {name: rate for name, rate, _ in rows}, "raw_rate": raw_rate,
            "evaluator_rate": policy_rate, "naive_rate": naive,
            "share_of_raw": policy_rate / raw_rate, "vs_naive": policy_rate / naive,
            "policy_ms_per_step": policy_ms, "mt50_50_goal_minutes": full / policy_rate / 60,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
