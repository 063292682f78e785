"""End-to-end runs on the tiny preset: real Meta-World data, training, masks, evaluation."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mtrl_bench.cli import main
from mtrl_bench.rundir import MetricsLog, is_finished, run_dir

TINY = ["--preset", "tiny", "--no-progress"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    return {"data": str(root / "data"), "results": str(root / "results")}


def _cli(dirs, *args):
    return main(["run", *args, *TINY, "--data-dir", dirs["data"],
                 "--results-dir", dirs["results"]])


def _subprocess_env(dirs):
    return {**os.environ, "MTRL_BENCH_DATA_DIR": dirs["data"],
            "MTRL_BENCH_RESULTS_DIR": dirs["results"]}


def _final(path):
    return json.loads((path / "final.json").read_text())


def test_end_to_end_run_writes_a_complete_run_directory(dirs, capsys):
    assert _cli(dirs, "--method", "socodt", "--wandb", "offline") == 0
    path = run_dir(dirs["results"], "random-2:0", "near-optimal", "socodt", 0)
    assert is_finished(path)
    final = _final(path)
    assert final["final"]["step"] == 20 and final["final"]["num_goals"] == 3
    assert set(final["final"]["success"]) == set(final["tasks"]) and len(final["tasks"]) == 2
    assert "best over evaluations" in final["best"]["label"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["wall_time_s"] > 0 and meta["versions"]["torch"]
    log = MetricsLog(path / "metrics.jsonl")
    assert [r["step"] for r in log.records("eval")] == [10, 20]
    masks = log.records("mask")
    assert [r["step"] for r in masks] == [5, 10, 15]
    assert all(len(r["sparsity"]) == 2 and r["beta"] is not None for r in masks)
    operative = (path / "config.gin").read_text()
    assert "SOCODT_ALPHA = 20.0" in operative and "Run.budget_sequences = 160" in operative
    assert list((path / "wandb").glob("offline-run-*")), "wandb offline run missing"
    out = capsys.readouterr().out
    assert "MEAN" in out and "results in" in out

    # a finished run is not redone
    mtime = (path / "final.json").stat().st_mtime_ns
    assert _cli(dirs, "--method", "socodt") == 0
    assert (path / "final.json").stat().st_mtime_ns == mtime
    assert "already finished" in capsys.readouterr().out
    # ... also when only how it is carried out changes, not what it computes
    assert _cli(dirs, "--method", "socodt", "--gin_binding", "Trainer.log_every = 7") == 0
    assert "already finished" in capsys.readouterr().out
    # but a run with other settings is not passed off as this one
    assert _cli(dirs, "--method", "socodt", "--gin_binding", "SOCODT_ALPHA = 5.0") == 2
    err = capsys.readouterr().err.strip()
    assert "holds a finished run made with other settings (socodt.alpha: 20.0 -> 5.0)" in err
    assert len(err.splitlines()) == 1 and (path / "final.json").stat().st_mtime_ns == mtime


def test_killed_run_resumes_to_the_same_result(dirs):
    """SIGKILL mid-training, rerun: the final result equals an uninterrupted run's."""
    env = _subprocess_env(dirs)
    args = [sys.executable, "-m", "mtrl_bench", "run", "--method", "harmodt-f", *TINY]
    path = run_dir(dirs["results"], "random-2:0", "near-optimal", "harmodt-f", 2)
    proc = subprocess.Popen([*args, "--seed", "2"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def checkpointed_wall_time():  # meta.json gets the wall time right after a checkpoint
        try:
            return json.loads((path / "meta.json").read_text()).get("wall_time_s")
        except (OSError, ValueError):
            return None

    deadline = time.time() + 240
    while time.time() < deadline and checkpointed_wall_time() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (path / "checkpoint.pt").exists() and not is_finished(path)
    killed_wall = checkpointed_wall_time()
    other = subprocess.run([*args, "--seed", "2", "--gin_binding", "Run.batch_size = 2"],
                           env=env, capture_output=True, text=True)
    assert other.returncode == 2 and "checkpoint of an unfinished run made with other " \
        "settings (Run.batch_size: 4 -> 2" in other.stderr
    subprocess.run([*args, "--seed", "2"], env=env, check=True, capture_output=True)
    resumed = _final(path)
    assert json.loads((path / "meta.json").read_text())["wall_time_s"] > killed_wall > 0
    steps = [r["step"] for r in MetricsLog(path / "metrics.jsonl").records()]
    assert steps == sorted(steps), "the resume left records of lost work in metrics.jsonl"
    subprocess.run([*args, "--seed", "2", "--force"], env=env, check=True, capture_output=True)
    assert resumed["final"] == _final(path)["final"]


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'; valid: "),
    (["--method", "socodt", "--suite", "mt7"], "unknown suite 'mt7'; valid: mt5"),
    (["--method", "socodt", "--quality", "great"], "unknown quality 'great'; valid: "),
    (["--method", "socodt", "--gin_binding", "Nope.x = 1"], "bad gin configuration: "),
    (["--method", "socodt", "--preset", "huge"], "unknown preset 'huge'; valid: "),
    (["--method", "socodt", "--gin_binding", "Run.seed = 'a'"], "Run.seed must be int, got 'a'"),
    (["--method", "socodt", "--gin_binding", "Run.batch_size = 0"],
     "Run.batch_size must be >= 1, got 0"),
    (["--method", "socodt", "--device", "cuda"], "no CUDA GPU is available"),
])
def test_bad_input_gives_one_line_errors(dirs, capsys, args, message):
    if "--device" in args and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    preset = ["--preset", "tiny"] if "--preset" not in args else []
    code = main(["run", *args, *preset, "--data-dir", dirs["data"],
                 "--results-dir", dirs["results"], "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_unwritable_results_dir_is_a_one_line_error(dirs, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["run", "--method", "promptdt", *TINY, "--data-dir", dirs["data"],
                 "--results-dir", str(blocker / "results")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot write the run directory" in err and len(err.splitlines()) == 1
