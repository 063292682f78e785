"""Dataset generation, storage and validation on real Meta-World at tiny sizes.

Two tasks, 8 episodes of 100 steps: long enough for the expert to succeed (so the quality
ladder shows), short enough for a 2-core CPU.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from toolbox import default_sigint

from mtrl_bench import cli
from mtrl_bench.data import generation as datagen
from mtrl_bench.data.dataset import (
    QUALITIES,
    TaskDataset,
    dataset_path,
    default_data_dir,
    load_suite_dataset,
)
from mtrl_bench.data.external import plan_external_suite
from mtrl_bench.data.generation import ensure_suite_dataset
from mtrl_bench.errors import DatasetError
from mtrl_bench.suites import make_env

TASKS = ["reach-v3", "button-press-topdown-v3"]
EPISODES, LENGTH = 8, 100
ARRAYS = ("observations", "actions", "rewards", "successes", "goal_index", "epsilon", "sigma")
SETTINGS = dict(episodes=EPISODES, seed=0, episode_length=LENGTH)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Near-optimal data generated in this process (one worker); tests copy it before editing."""
    root = tmp_path_factory.mktemp("data")
    ensure_suite_dataset(TASKS, "near-optimal", data_dir=root, workers=1, progress=False,
                         **SETTINGS)
    return root


@pytest.fixture
def copy_dir(data_dir, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(data_dir, target)
    return target


def _path(root, task="reach-v3", quality="near-optimal", **overrides):
    settings = {**SETTINGS, **overrides}
    return dataset_path(root, task, quality, settings["episodes"], settings["seed"],
                        settings["episode_length"])


def _assert_same(a: TaskDataset, b: TaskDataset, stop=None):
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name)[:stop], getattr(b, name)[:stop],
                                      err_msg=name)


def test_layout_schedule_and_meta(data_dir):
    datasets = load_suite_dataset(TASKS, "near-optimal", data_dir=data_dir, **SETTINGS)
    assert list(datasets) == TASKS
    ds = datasets["reach-v3"]
    assert ds.observations.shape == (EPISODES, LENGTH, 39) and ds.observations.dtype == np.float32
    assert ds.actions.shape == (EPISODES, LENGTH, 4) and np.abs(ds.actions).max() <= 1.0
    assert ds.successes.dtype == bool and ds.returns.shape == ds.episode_success.shape == (8,)
    np.testing.assert_array_equal(ds.goal_index, np.arange(EPISODES) % 50)
    k = np.arange(EPISODES)
    np.testing.assert_allclose(ds.epsilon, np.maximum(0, 1 - k / (0.6 * EPISODES)), atol=1e-6)
    np.testing.assert_allclose(ds.sigma, 0.1 + 0.4 * (1 - k / EPISODES), atol=1e-6)
    # the first episode is fully random, the last ones follow the expert
    assert not ds.episode_success[0] and ds.episode_success[-3:].all()
    meta = ds.meta
    assert meta["settings"] == dict(task="reach-v3", quality="near-optimal", episodes=EPISODES,
                                    seed=0, episode_length=LENGTH, generator_version=1)
    assert meta["schedule"]["ladder_episodes"] == EPISODES
    assert meta["versions"]["metaworld"] and meta["file"].endswith("reach-v3__ep8_seed0_len100.npz")


def test_stored_actions_replay_to_stored_observations(data_dir):
    """Observations are the pre-action states and rewards/successes line up with the steps."""
    ds = load_suite_dataset(["button-press-topdown"], "near-optimal", data_dir=data_dir,
                            **SETTINGS)["button-press-topdown-v3"]
    episode = EPISODES - 1
    env = make_env("button-press-topdown-v3", int(ds.goal_index[episode]))
    obs, _ = env.reset()
    for t in range(LENGTH):
        np.testing.assert_array_equal(obs.astype(np.float32), ds.observations[episode, t])
        obs, reward, _, _, info = env.step(ds.actions[episode, t])
        assert np.float32(reward) == ds.rewards[episode, t]
        assert bool(info["success"]) == ds.successes[episode, t]


@pytest.mark.slow
def test_same_seed_same_data_whatever_the_worker_count(data_dir, tmp_path):
    pooled = ensure_suite_dataset(TASKS, "near-optimal", data_dir=tmp_path, workers=2,
                                  progress=False, **SETTINGS)
    reference = load_suite_dataset(TASKS, "near-optimal", data_dir=data_dir, **SETTINGS)
    for task in TASKS:
        _assert_same(pooled[task], reference[task])
    other_seed = ensure_suite_dataset(["reach"], "near-optimal", data_dir=tmp_path, workers=1,
                                      progress=False, **{**SETTINGS, "seed": 1})["reach-v3"]
    assert not np.array_equal(other_seed.actions, reference["reach-v3"].actions)


def test_sub_optimal_is_the_noisier_first_half_of_the_ladder(data_dir, tmp_path):
    near = load_suite_dataset(TASKS, "near-optimal", data_dir=data_dir, **SETTINGS)
    sub = ensure_suite_dataset(TASKS, "sub-optimal", data_dir=tmp_path, workers=1,
                               progress=False, **{**SETTINGS, "episodes": EPISODES // 2})
    for task in TASKS:
        _assert_same(sub[task], near[task], stop=EPISODES // 2)
        assert sub[task].meta["schedule"]["ladder_episodes"] == EPISODES
        assert near[task].episode_success.mean() > sub[task].episode_success.mean()
        assert near[task].returns.mean() > sub[task].returns.mean()


def test_resume_skips_finished_tasks_and_cleans_stale_tmp(copy_dir, capsys):
    before = load_suite_dataset(TASKS, "near-optimal", data_dir=copy_dir, **SETTINGS)
    kept = _path(copy_dir, "button-press-topdown-v3")
    kept_mtime = kept.stat().st_mtime_ns
    _path(copy_dir).unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = kept.with_name(f".reach-v3__ep8_seed0_len100.npz.{dead.pid}.tmp")
    live = kept.with_name(f".push-v3__ep8_seed0_len100.npz.{os.getpid()}.tmp")
    stale.write_bytes(b"half a file")
    live.write_bytes(b"being written by a running generator")
    after = ensure_suite_dataset(TASKS, "near-optimal", data_dir=copy_dir, workers=1,
                                 progress=False, **SETTINGS)
    # said even without a progress bar
    assert ("generating 1 near-optimal task dataset(s) (8 episodes of 100 steps) in "
            f"{copy_dir / 'near-optimal'}; 1 already there") in capsys.readouterr().err
    assert kept.stat().st_mtime_ns == kept_mtime
    assert not stale.exists() and live.exists()
    for task in TASKS:
        _assert_same(after[task], before[task])


@pytest.mark.slow
def test_interrupted_run_resumes(tmp_path):
    """Ctrl-C after the first task is written: it stays, the rest is redone on the next run."""
    cmd = [sys.executable, "-m", "mtrl_bench", "data", "--tasks", *TASKS, "--quality",
           "near-optimal", "--episodes", "24", "--episode-length", "250", "--workers", "2",
           "--data-dir", str(tmp_path)]
    first, second = (_path(tmp_path, t, episodes=24, episode_length=250) for t in TASKS)
    proc = subprocess.Popen(cmd + ["--no-progress"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.time() + 240  # a guard against a hang, as in the other end-to-end tests
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert first.exists() and not second.exists()
    assert not list(first.parent.glob(".*.tmp"))
    mtime = first.stat().st_mtime_ns
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 already there" in rerun.stderr
    assert first.stat().st_mtime_ns == mtime and second.exists()


def _rewrite(path, **changes):
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays.update(changes)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _cli_error(capsys, *argv):
    assert cli.main(["data", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_check_prints_the_table(data_dir, capsys):
    assert cli.main(["data", "--check", "--tasks", *TASKS, "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    datasets = load_suite_dataset(TASKS, "near-optimal", data_dir=data_dir, **SETTINGS)
    for task, ds in datasets.items():
        row = next(line for line in out.splitlines() if f" {task} " in line).split()
        assert row[:7] == ["near-optimal", task, "8", "100", "0", "800",
                           f"{100 * ds.episode_success.mean():.1f}"]
        assert row[7] == f"{ds.returns.mean():.1f}"
    assert "mean of 2 tasks" in out
    assert cli.main(["data", "--info", "--data-dir", str(data_dir)]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--suite", "mt7", "--quality", "near-optimal"], "unknown suite 'mt7'"),
    (["--tasks", "reach-the-moon", "--quality", "near-optimal"], "unknown task 'reach-the-moon'"),
    (["--tasks", "reach", "--quality", "great"], "unknown quality 'great'; valid: near-optimal"),
    (["--tasks", "reach", "--quality", "near-optimal", "--episode-length", "600"],
     "episode length must be between 1 and 500"),
    (["--check", "--tasks", "push", "--quality", "near-optimal"],
     "missing near-optimal dataset for push-v3"),
    (["--check", "--tasks", "reach", "--quality", "sub-optimal"],
     "missing sub-optimal dataset for reach-v3"),
])
def test_bad_input_gives_one_line_errors(data_dir, capsys, argv, message):
    assert message in _cli_error(capsys, *argv, "--data-dir", str(data_dir))


def test_truncated_file(copy_dir, capsys):
    path = _path(copy_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    err = _cli_error(capsys, "--check", "--data-dir", str(copy_dir))
    assert str(path) in err and "truncated or corrupt" in err


@pytest.mark.parametrize("change, message", [
    ("nan", "observations has 1 NaN/inf values (first in episode 3)"),
    ("shape", "observations has shape (8, 100, 38), expected (8, 100, 39)"),
    ("dtype", "rewards has dtype float64, expected float32"),
    ("meta", "settings do not match: seed=1 in the file but 0 asked"),
])
def test_damaged_file(copy_dir, capsys, change, message):
    path = _path(copy_dir)
    with np.load(path) as npz:
        observations, rewards, meta = npz["observations"], npz["rewards"], str(npz["meta"])
    if change == "nan":
        observations[3, 5, 7] = np.nan
        _rewrite(path, observations=observations)
    elif change == "shape":
        _rewrite(path, observations=observations[..., :38])
    elif change == "dtype":
        _rewrite(path, rewards=rewards.astype(np.float64))
    else:
        _rewrite(path, meta=np.array(meta.replace('"seed": 0', '"seed": 1')))
    err = _cli_error(capsys, "--check", "--tasks", *TASKS, "--data-dir", str(copy_dir))
    assert err.startswith(f"mtrl-bench data: error: {path}: ") and message in err
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_suite_dataset(TASKS, "near-optimal", data_dir=copy_dir, **SETTINGS)


def test_settings_in_the_name_must_match_the_file(copy_dir, capsys):
    renamed = _path(copy_dir, episodes=9)
    _path(copy_dir).rename(renamed)
    err = _cli_error(capsys, "--check", "--data-dir", str(copy_dir))
    assert str(renamed) in err and "episodes=8 in the file but 9 asked" in err
    with pytest.raises(DatasetError, match="reach-v3__ep8_seed0_len100.npz does not exist "
                                           r"\(other settings present: reach-v3__ep9"):
        load_suite_dataset(["reach"], "near-optimal", data_dir=copy_dir, **SETTINGS)


def test_unspecified_size_takes_the_only_one_present(data_dir):
    (ds,) = load_suite_dataset(["reach"], "near-optimal", data_dir=data_dir, seed=0,
                               episode_length=LENGTH).values()
    assert ds.num_episodes == EPISODES and ds.episode_length == LENGTH
    with pytest.raises(DatasetError, match="missing dataset: no sub-optimal file for reach-v3"):
        load_suite_dataset(["reach"], "sub-optimal", data_dir=data_dir, episode_length=LENGTH)


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MTRL_BENCH_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("MTRL_BENCH_DATA_DIR")
    assert default_data_dir().parts[-3:] == (".cache", "mtrl-bench", "data")
    assert QUALITIES == ("near-optimal", "sub-optimal")


def _write_harmodt_episode(path, steps, index, success=None):
    rng = np.random.default_rng(index)
    arrays = dict(
        observations=rng.normal(size=(steps, 39)).astype(np.float32),
        actions=rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
        rewards=np.full((steps, 1), index, np.float32),
        next_observations=rng.normal(size=(steps, 39)).astype(np.float32),
        terminals=np.eye(1, steps, steps - 1, dtype=np.float32).reshape(steps, 1),
    )
    if success is not None:
        arrays["success"] = success
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def test_harmodt_layout(tmp_path, capsys):
    steps = 20
    reach = [_write_harmodt_episode(tmp_path / "reach-v2" / f"{i}.npz", steps, i)
             for i in range(11)]
    flags = np.arange(steps) >= 15
    _write_harmodt_episode(tmp_path / "push-v3" / "0.npz", steps, 0, success=flags)
    datasets = plan_external_suite(tmp_path, ["reach-v3", "push-v2"], "near-optimal",
                                   prompt_episodes=0).load()  # every episode, no prompts
    ds = datasets["reach-v3"]
    assert ds.observations.shape == (11, steps, 39) and ds.rewards.shape == (11, steps)
    np.testing.assert_array_equal(ds.rewards[:, 0], np.arange(11))  # numeric, not text, order
    np.testing.assert_array_equal(ds.observations[10], reach[10]["observations"])
    assert not ds.successes.any() and ds.meta["success_known"] is False
    assert (ds.goal_index == -1).all() and np.isnan(ds.epsilon).all()
    assert datasets["push-v3"].meta["success_known"] is True
    np.testing.assert_array_equal(datasets["push-v3"].successes[0], flags)

    assert cli.main(["data", "--harmodt-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "reach-v3" in out and "push-v3" in out and "n/a" in out

    with pytest.raises(DatasetError, match="lacks 1 task.s. of the suite: door-open-v3"):
        plan_external_suite(tmp_path, ["door-open"], "near-optimal")
    bad = tmp_path / "reach-v2" / "4.npz"
    arrays = dict(np.load(bad))
    arrays["rewards"][3] = np.inf
    np.savez(bad, **arrays)
    err = _cli_error(capsys, "--harmodt-root", str(tmp_path), "--tasks", "reach")
    assert str(bad) in err and "rewards has NaN/inf values" in err
    arrays["rewards"][3] = 0
    arrays["actions"] = arrays["actions"][:, :3]
    np.savez(bad, **arrays)
    err = _cli_error(capsys, "--harmodt-root", str(tmp_path), "--tasks", "reach")
    assert str(bad) in err and "actions has shape (20, 3), expected (20, 4)" in err


def test_ladder_helpers():
    eps, sigma = datagen.ladder(np.array([0, 3, 6, 9]), 10)
    np.testing.assert_allclose(eps, [1.0, 0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(sigma, [0.5, 0.38, 0.26, 0.14], atol=1e-6)
    assert datagen.task_key("reach-v3") == datagen.task_key("reach-v3") != datagen.task_key(
        "push-v3")


def test_harmodt_root_must_exist(tmp_path):
    with pytest.raises(DatasetError, match="HarmoDT data folder .* does not exist"):
        plan_external_suite(tmp_path / "nowhere", ["reach"], "near-optimal")


@pytest.mark.parametrize("damage", ["settings", "truncated", "empty"])
def test_a_file_that_does_not_match_is_an_error_not_replaced(copy_dir, capsys, damage):
    """Datasets are never replaced silently: the file is named, with how to regenerate."""
    path = _path(copy_dir)
    before = load_suite_dataset(["reach"], "near-optimal", data_dir=copy_dir, **SETTINGS)
    if damage == "settings":
        with np.load(path) as npz:
            meta = str(npz["meta"])
        _rewrite(path, meta=np.array(meta.replace('"generator_version": 1',
                                                  '"generator_version": 0')))
        message = "made with other settings: generator_version=0 in the file but 1 asked"
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        message = "truncated or corrupt"
    else:
        path.write_bytes(b"")
        message = str(path)
    content = path.read_bytes()
    with pytest.raises(DatasetError, match="--force") as info:
        ensure_suite_dataset(["reach"], "near-optimal", data_dir=copy_dir, workers=1,
                             progress=False, **SETTINGS)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "mtrl-bench data --tasks reach-v3 --quality near-optimal --episodes 8" in str(
        info.value)
    assert path.read_bytes() == content  # untouched
    # regenerating is an explicit request, and said
    after = ensure_suite_dataset(["reach"], "near-optimal", data_dir=copy_dir, workers=1,
                                 progress=False, force=True, **SETTINGS)
    if damage == "settings":
        assert "regenerating reach-v3 (asked for)" in capsys.readouterr().err
    _assert_same(after["reach-v3"], before["reach-v3"])


def test_data_force_regenerates_from_the_command_line(copy_dir, capsys):
    path = _path(copy_dir)
    path.write_bytes(b"garbage")
    argv = ["data", "--tasks", "reach", "--quality", "near-optimal", "--episodes", "8",
            "--episode-length", "100", "--workers", "1", "--data-dir", str(copy_dir),
            "--no-progress"]
    assert cli.main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main([*argv, "--force"]) == 0
    load_suite_dataset(["reach"], "near-optimal", data_dir=copy_dir, **SETTINGS)


def test_check_flags_files_of_no_task_of_the_suite(copy_dir, capsys):
    stray = _path(copy_dir, "reach-the-moon-v3")
    shutil.copy(_path(copy_dir), stray)
    assert cli.main(["data", "--check", "--data-dir", str(copy_dir)]) == 0
    out = capsys.readouterr().out
    assert f"not checked: {stray}: unknown task 'reach-the-moon-v3'" in out
    assert "reach-the-moon-v3 " not in out.split("not checked:")[0]  # not a normal row
    assert cli.main(["data", "--check", "--tasks", "reach", "--data-dir", str(copy_dir)]) == 0
    assert (f"{_path(copy_dir, 'button-press-topdown-v3')}: button-press-topdown-v3 is not a "
            "task of this suite") in capsys.readouterr().out


def test_a_dataset_that_cannot_fit_is_refused_before_any_work(tmp_path, capsys):
    start = time.perf_counter()
    err = _cli_error(capsys, "--tasks", "reach", "--quality", "near-optimal", "--episodes",
                     "1000000000", "--data-dir", str(tmp_path))
    assert time.perf_counter() - start < 5
    assert "1000000000 episodes of 500 steps need about" in err and "GB of memory" in err
    assert not (tmp_path / "near-optimal").exists()
