"""Training and evaluating on the paper's own data layout (HarmoDT/MTDiff): a synthetic
folder written from real Meta-World episodes, in both layouts, run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtrl_bench.cli import main
from mtrl_bench.config import target_return
from mtrl_bench.data.external import HARMODT_TARGET_RETURN, plan_external_suite
from mtrl_bench.data.generation import ensure_suite_dataset
from mtrl_bench.errors import DatasetError, UserError
from mtrl_bench.plan import plan_run
from mtrl_bench.runs.runner import run_dir_of
from mtrl_bench.suites import resolve_suite
from mtrl_bench.training.sampling import TaskBatchSampler

TASKS = resolve_suite("random-2:0")  # the tiny preset's suite
EPISODES = 6


def write_harmodt(folder, datasets, rename=True):
    """``<folder>/<task>/<i>.npz`` with HarmoDT's keys, task folders named -v2."""
    for task, ds in datasets.items():
        target = folder / (task.replace("-v3", "-v2") if rename else task)
        target.mkdir(parents=True)
        for i in range(ds.num_episodes):
            obs = ds.observations[i]
            np.savez(target / f"{i}.npz", observations=obs, actions=ds.actions[i],
                     rewards=ds.rewards[i][:, None], next_observations=np.roll(obs, -1, 0),
                     terminals=np.zeros((obs.shape[0], 1)))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    datasets = ensure_suite_dataset(TASKS, "near-optimal", data_dir=root, episodes=EPISODES,
                                    episode_length=60, workers=1, progress=False)
    return root, datasets


@pytest.fixture
def buffer(tmp_path, generated):
    """One buffer per task (the layout HarmoDT's download has)."""
    write_harmodt(tmp_path / "harmodt", generated[1])
    return tmp_path / "harmodt"


def test_splits_and_held_out_prompts(buffer, generated, tmp_path):
    near = plan_external_suite(buffer, TASKS, "near-optimal")
    sub = plan_external_suite(buffer, TASKS, "sub-optimal")
    assert (near.split, sub.split) == ("whole buffer", "first half")
    train, prompts = near.files[TASKS[0]]
    assert [p.name for p in prompts] == ["4.npz", "5.npz"]  # the last two: prompts only
    assert [p.name for p in train] == ["0.npz", "1.npz", "2.npz", "3.npz"]
    assert [p.name for p in sub.files[TASKS[0]][0]] == ["0.npz", "1.npz", "2.npz"]
    ds = near.load()[TASKS[0]]
    assert ds.prompt_episodes == 2 and ds.training().num_episodes == 4
    assert set(ds.demonstration_indices().tolist()) == {4, 5}
    source = generated[1][TASKS[0]]
    np.testing.assert_array_equal(ds.observations[4], source.observations[4])
    # the sampler trains on the 4 training episodes only; prompts come from the held-out 2
    sampler = TaskBatchSampler([ds], 8, 3, 4, seed=0)
    assert sampler.data.count.tolist() == [4] and sampler.demos.count.tolist() == [2]

    folders = tmp_path / "by-quality"
    write_harmodt(folders / "near-optimal", generated[1])
    write_harmodt(folders / "sub-optimal", {t: d.training() for t, d in generated[1].items()})
    split = plan_external_suite(folders, TASKS, "sub-optimal")
    assert split.split == "folders"
    train, prompts = split.files[TASKS[0]]
    assert len(train) == EPISODES and prompts[0].parent.parent.name == "near-optimal"


def test_identity_records_the_data_and_notices_a_change(buffer):
    plan = plan_run("socodt", "tiny", overrides={"data": f"harmodt:{buffer}"})
    protocol = plan.identity["protocol"]
    assert protocol["dataset.source"] == "harmodt" and protocol["dataset.root"] == str(buffer)
    assert protocol["dataset.episodes"] == {t: 4 for t in TASKS}
    assert "run.episodes" not in protocol  # a setting of generated data only
    generated = plan_run("socodt", "tiny")
    assert generated.identity["protocol"]["dataset.source"] == "generated"
    assert generated.cell != plan.cell  # never one cell
    episode = buffer / TASKS[1].replace("-v3", "-v2") / "1.npz"
    arrays = dict(np.load(episode))
    arrays["rewards"] = arrays["rewards"] * 1.5
    np.savez(episode, **arrays)
    changed = plan_run("socodt", "tiny", overrides={"data": f"harmodt:{buffer}"})
    assert changed.identity["protocol"]["dataset.fingerprint"] != protocol["dataset.fingerprint"]
    assert changed.cell != plan.cell


@pytest.mark.slow
def test_a_run_on_harmodt_data_ends_in_its_own_cell(buffer, generated, tmp_path, capsys):
    results = tmp_path / "results"
    common = ["--method", "socodt", "--preset", "tiny", "--results-dir", str(results),
              "--no-progress"]
    assert main(["run", *common, "--data", f"harmodt:{buffer}"]) == 0
    assert main(["run", *common, "--data-dir", str(generated[0])]) == 0
    capsys.readouterr()
    assert main(["table", "--results-dir", str(results), "--resamples", "100"]) == 0
    capsys.readouterr()
    table = (results / "tables" / "table1.csv").read_text()
    assert "random-2:0 near-optimal (harmodt data)" in table
    path = run_dir_of(plan_run("socodt", "tiny", overrides={"data": f"harmodt:{buffer}"},
                    results=results))
    final = json.loads((path / "final.json").read_text())
    assert final["final"]["num_goals"] == 3
    # the file changes: a rerun is another run, and says why
    episode = buffer / TASKS[0].replace("-v3", "-v2") / "0.npz"
    arrays = dict(np.load(episode))
    arrays["actions"] = arrays["actions"] * 0.5
    np.savez(episode, **arrays)
    assert main(["run", *common, "--data", f"harmodt:{buffer}"]) == 0
    assert "changed since" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    ("missing", "lacks 1 task(s) of the suite: stick-pull-v3"),
    ("corrupt", "truncated or corrupt file"),
    ("few", "need more than 2 (the last 2 are prompts)"),
])
def test_a_broken_folder_is_one_line(buffer, tmp_path, capsys, damage, message):
    task_dir = buffer / "stick-pull-v2"
    if damage == "missing":
        for path in task_dir.iterdir():
            path.unlink()
        task_dir.rmdir()
    elif damage == "corrupt":
        (task_dir / "2.npz").write_bytes(b"not an episode")
    else:
        for i in range(2, EPISODES):
            (task_dir / f"{i}.npz").unlink()
    code = main(["run", "--method", "promptdt", "--preset", "tiny", "--data",
                 f"harmodt:{buffer}", "--results-dir", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_options_and_bad_input(buffer):
    assert target_return("dataset-best") is None
    assert target_return("harmodt") == HARMODT_TARGET_RETURN == 4500.0
    assert target_return("3000") == 3000.0
    with pytest.raises(UserError, match="Run.eval_target_return must be"):
        target_return("lots")
    with pytest.raises(UserError, match="Run.episodes has no effect: it describes generated"):
        plan_run("socodt", "tiny", bindings=["Run.episodes = 4"],
                 overrides={"data": f"harmodt:{buffer}"})
    with pytest.raises(UserError, match="unknown data source 'nowhere'"):
        plan_run("socodt", "tiny", overrides={"data": "nowhere"})
    with pytest.raises(DatasetError, match="does not exist"):
        plan_run("socodt", "tiny", overrides={"data": f"harmodt:{buffer}-missing"})
    with pytest.raises(DatasetError, match="has quality folders but no sub-optimal"):
        (buffer / "near-optimal").mkdir()
        plan_external_suite(buffer, TASKS, "sub-optimal")
