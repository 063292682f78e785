"""Meta-World's own evaluator run on our goals: the reference :class:`Evaluator` is checked
against (``tools/crosscheck_eval.py`` and ``tests/test_evaluation.py``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from mtrl_bench.evaluation.agents import Agent
from mtrl_bench.suites import MAX_EPISODE_STEPS


def metaworld_reference_evaluation(agent: Agent, tasks: Sequence[str],
                                   goal_indices: Sequence[int],
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
