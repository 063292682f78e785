"""The evaluator against Meta-World's own evaluator, plus its worker-pool guarantees.

Real Meta-World at tiny sizes: 2 tasks x 3 goals, 50-step episodes (short enough that the
scripted expert succeeds on some goals and not on others).
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mtrl_bench.methods.erk import erk_random_masks
from toolbox import default_sigint

from mtrl_bench.data.dataset import TaskDataset
from mtrl_bench.errors import UserError
from mtrl_bench.evaluation.agents import DecisionTransformerAgent, ScriptedExpertAgent
from mtrl_bench.evaluation.crosscheck import metaworld_reference_evaluation
from mtrl_bench.evaluation.envpool import EnvPool
from mtrl_bench.evaluation.evaluator import Evaluator
from mtrl_bench.suites import make_env
from mtrl_bench.training.masking import TaskMasks
from mtrl_bench.training.model import DecisionTransformer, PromptDTConfig

TASKS = ["reach-v3", "pick-place-v3"]
GOALS = [0, 1, 2]
STEPS = 50


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def evaluator():
    with Evaluator(TASKS, goal_indices=GOALS, max_steps=STEPS, workers=2) as ev:
        yield ev


@pytest.fixture(scope="module")
def expert_result(evaluator):
    return evaluator.evaluate(ScriptedExpertAgent(TASKS))


def _expert_dataset(task: str, goals: list[int], length: int) -> TaskDataset:
    """A few real scripted-expert episodes of ``task`` as a TaskDataset."""
    expert = ScriptedExpertAgent([task])
    episodes = []
    for goal in goals:
        env = make_env(task, goal)
        obs, _ = env.reset()
        steps = []
        for _ in range(length):
            action = expert.act(obs[None, None])[0, 0]
            next_obs, reward, _, _, info = env.step(action)
            steps.append((obs, action, reward, bool(info["success"])))
            obs = next_obs
        episodes.append([np.array(column) for column in zip(*steps)])
    obs, actions, rewards, successes = (np.stack(c) for c in zip(*episodes))
    e = len(goals)
    return TaskDataset(task, obs.astype(np.float32), actions.astype(np.float32),
                       rewards.astype(np.float32), successes, np.asarray(goals, dtype=np.int64),
                       np.zeros(e, np.float32), np.zeros(e, np.float32), {})


def _assert_same_as_metaworld(result, reference):
    success, returns = reference
    assert result.success == success
    for task in TASKS:
        ours = [e.return_to_first_success if e.success else e.episode_return
                for e in result.episodes if e.task == task]
        # Meta-World sums float32 rewards of some tasks in float32; we sum in float64
        np.testing.assert_allclose(ours, returns[task], rtol=1e-5)


@pytest.mark.slow
def test_scripted_expert_matches_metaworld_evaluator(expert_result):
    reference = metaworld_reference_evaluation(ScriptedExpertAgent(TASKS), TASKS, GOALS, STEPS)
    _assert_same_as_metaworld(expert_result, reference)
    assert 0.0 < expert_result.mean_success < 1.0  # both outcomes occur at this length
    record = expert_result.metrics_record(step=7)
    assert set(record) == {"kind", "step", "num_goals", "success", "return", "mean_success",
                           "mean_return"}
    assert record["kind"] == "eval" and record["num_goals"] == len(GOALS)
    assert list(record["success"]) == TASKS
    assert [(e.task, e.goal) for e in expert_result.episodes] == [
        (t, g) for t in TASKS for g in GOALS]
    for e in expert_result.episodes:
        assert e.success == (e.first_success_step is not None)
        assert e.first_success_step is None or 0 <= e.first_success_step < STEPS


@pytest.mark.slow
@pytest.mark.parametrize("conditioning", ["prompt", "task_id"])
def test_masked_dt_matches_metaworld_and_is_deterministic(evaluator, conditioning):
    datasets = {task: _expert_dataset(task, [10, 11], 40) for task in TASKS}
    torch.manual_seed(0)
    cfg = PromptDTConfig(n_layer=2, n_embd=32, n_head=2, n_inner=64, dropout=0.1,
                         context_len=4, prompt_len=3, conditioning=conditioning, num_tasks=3)
    # float64: float32 results depend on the batch shape at rounding level (agents.py)
    # left in train mode: the agent must switch dropout off
    model = DecisionTransformer(cfg).double()
    soft = erk_random_masks(3, model.mask_segments, 0.2, torch.Generator().manual_seed(0), "cpu")
    masks = TaskMasks(soft, model.mask_segments)

    def agent():  # the evaluated tasks are rows 2 and 0 of a 3-task mask set
        return DecisionTransformerAgent.from_datasets(model, datasets, TASKS, masks=masks,
                                                      task_ids=[2, 0])

    live = agent()
    first = evaluator.evaluate(live)
    reference = metaworld_reference_evaluation(agent(), TASKS, GOALS, STEPS)
    _assert_same_as_metaworld(first, reference)
    # two halves of the goals in turn, one's forward pass during the other's steps: the
    # same episodes (in float64; the forward's batch shape changes)
    evaluator.overlap = False
    try:
        assert evaluator.evaluate(agent()).episodes == first.episodes
    finally:
        evaluator.overlap = True
    assert model.training
    assert evaluator.evaluate(agent()).episodes == first.episodes  # same workers, same result

    masks.values[2] = masks.values[1]  # a mask update, as the trainer makes between evaluations
    masks.refresh()
    updated = evaluator.evaluate(live)
    assert updated.episodes != first.episodes
    assert updated.episodes == evaluator.evaluate(agent()).episodes


def test_overlapped_halves_give_the_same_episodes(evaluator, expert_result):
    for overlap in (True, False):
        evaluator.overlap = overlap
        try:
            assert evaluator.evaluate(ScriptedExpertAgent(TASKS)).episodes == \
                expert_result.episodes
        finally:
            evaluator.overlap = True


@pytest.mark.slow
def test_rounds_and_goal_subsets_do_not_change_episodes(evaluator, expert_result):
    first_goal = evaluator.evaluate(ScriptedExpertAgent(TASKS), num_goals=1)
    assert first_goal.episodes == [e for e in expert_result.episodes if e.goal == GOALS[0]]
    with pytest.raises(UserError, match="num_goals"):
        evaluator.evaluate(ScriptedExpertAgent(TASKS), num_goals=len(GOALS) + 1)

    with pytest.raises(KeyError):
        with Evaluator(TASKS, goal_indices=GOALS, max_steps=STEPS, workers=1,
                       max_envs=len(TASKS)) as one_goal_at_a_time:
            processes = one_goal_at_a_time.pool.processes
            assert one_goal_at_a_time.slots_per_task == 1
            rounds = one_goal_at_a_time.evaluate(ScriptedExpertAgent(TASKS))
            raise KeyError("an error inside the block stops the workers")
    assert rounds.episodes == expert_result.episodes
    assert not any(p.is_alive() for p in processes)


@pytest.mark.slow
def test_pool_matches_fresh_env_and_a_crash_names_task_and_goal():
    with EnvPool(["reach-v3"], goal_indices=[4], workers=1) as pool:
        pool.set_goals([4])
        np.testing.assert_array_equal(pool.reset()[0], make_env("reach-v3", 4).reset()[0])
        for _ in range(500):
            pool.step(np.zeros((1, 4), np.float32))
        with pytest.raises(RuntimeError, match=r"reach-v3 goal 4 .*failed during step"):
            pool.step(np.zeros((1, 4), np.float32))  # Meta-World raises past step 500
        assert not any(p.is_alive() for p in pool.processes)
        with pytest.raises(RuntimeError, match="closed"):
            pool.reset()


@pytest.mark.parametrize("kwargs, message", [
    ({"max_steps": 501}, "max_steps"),
    ({"goal_indices": [0, 50]}, "goal indices"),
    ({"num_goals": 0}, "num_goals"),
    ({"workers": 0}, "workers"),
])
def test_bad_arguments_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        Evaluator(TASKS, **kwargs)
    with pytest.raises(UserError, match="unknown task"):
        Evaluator(["reach-v3", "no-such-task"])


CTRL_C_SCRIPT = """
import sys
from mtrl_bench.evaluation.agents import ScriptedExpertAgent
from mtrl_bench.evaluation.evaluator import Evaluator
with Evaluator(["reach-v3", "pick-place-v3"], num_goals=10, workers=2) as ev:
    print(" ".join(str(p.pid) for p in ev.pool.processes), flush=True)
    while True:
        ev.evaluate(ScriptedExpertAgent(ev.tasks))
"""


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphaned worker may wait to be reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_ctrl_c_mid_evaluation_stops_every_worker():
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    pids = []
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        time.sleep(1.0)  # mid-episode
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:  # a failure must not leave the endless loop and its workers on the machine
        if proc.poll() is None:
            for pid in [proc.pid, *pids]:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "a worker outlived Ctrl-C"


@pytest.mark.parametrize("conditioning", ["prompt", "task_id"])
def test_acting_computes_only_the_last_state_token(conditioning):
    """last_only (what the agent uses) equals the full forward's last step, masks included."""
    torch.manual_seed(1)
    cfg = PromptDTConfig(n_layer=3, n_embd=32, n_head=2, n_inner=64, context_len=6,
                         prompt_len=3, conditioning=conditioning, num_tasks=3)
    model = DecisionTransformer(cfg).double().eval()
    masks = TaskMasks(erk_random_masks(3, model.mask_segments, 0.2,
                                       torch.Generator().manual_seed(0), "cpu").double(),
                      model.mask_segments)
    n, b, k = 3, 4, 6
    batch = dict(states=torch.randn(n, b, k, 39).double(),
                 actions=torch.randn(n, b, k, 4).double(),
                 returns_to_go=torch.randn(n, b, k, 1).double(),
                 timesteps=torch.randint(0, 100, (n, b, k)),
                 attention_mask=torch.ones(n, b, k).double())
    batch["attention_mask"][:, :2, :3] = 0  # episodes shorter than the context
    prompt = dict(states=torch.randn(n, 1, 3, 39).double(),
                  actions=torch.randn(n, 1, 3, 4).double(),
                  returns_to_go=torch.randn(n, 1, 3, 1).double(),
                  timesteps=torch.randint(0, 100, (n, 1, 3)),
                  attention_mask=torch.ones(n, 1, 3).double())
    kwargs = dict(prompt=prompt, task_ids=torch.arange(3), masks=masks)
    full = model(**batch, **kwargs)
    last = model(**batch, **kwargs, last_only=True)
    assert last.shape == (n, b, 1, 4)
    torch.testing.assert_close(last, full[:, :, -1:], rtol=1e-12, atol=1e-12)
