"""Sweeps run each grid cell as its own `mtrl-bench run` process, locally or on Ray."""

import json

import pytest

from mtrl_bench.cli import main
from mtrl_bench.rundir import is_finished, run_dir
from mtrl_bench.sweep import build_grid, run_ray


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sweep-data"))


def _run_args(data_dir):
    return ["--preset", "tiny", "--data-dir", data_dir, "--no-progress"]


def test_local_sweep_runs_the_grid_and_skips_finished_runs(tmp_path, data_dir, capsys):
    results = str(tmp_path / "results")
    argv = ["sweep", "--methods", "promptdt", "harmodt-r", "--suites", "random-2:0",
            "--seeds", "0", "--parallel", "2", "--results-dir", results, "--",
            *_run_args(data_dir)]
    assert main(argv) == 0
    paths = [run_dir(results, "random-2:0", "near-optimal", m, 0) for m in ("promptdt",
                                                                           "harmodt-r")]
    assert all(is_finished(p) for p in paths)
    assert "2 succeeded, 0 failed" in capsys.readouterr().out
    assert main(argv) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    # finished runs made with other settings are not skipped as if they were this grid's
    assert main([*argv, "--gin_binding", "Run.budget_sequences = 80"]) == 2
    err = capsys.readouterr().err.strip()
    assert "2 finished run(s) of this grid were made with other settings" in err
    assert "Run.budget_sequences: 160 -> 80" in err and len(err.splitlines()) == 1


def test_local_executor_never_puts_two_runs_on_one_gpu(monkeypatch):
    """Runs of unequal length each take a free GPU from the visible ones and give it back."""
    import threading
    import time

    from mtrl_bench import sweep

    lock, busy, seen = threading.Lock(), set(), []

    def fake_run(spec, env):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            assert gpu not in busy, f"{spec.label} got GPU {gpu}, already in use"
            busy.add(gpu)
            seen.append(gpu)
        time.sleep(0.05 if spec.seed % 3 else 0.2)
        with lock:
            busy.remove(gpu)
        return spec.label, 0

    monkeypatch.setattr(sweep, "_visible_gpus", lambda: ["4", "6"])
    monkeypatch.setattr(sweep, "_run_one", fake_run)
    specs = [sweep.RunSpec("promptdt", "mt5", "near-optimal", seed) for seed in range(8)]
    codes = sweep.run_local(specs)
    assert len(codes) == 8 and set(seen) == {"4", "6"}


def test_ray_executor_runs_on_a_real_local_ray_instance(tmp_path, data_dir):
    pytest.importorskip("ray")
    results = str(tmp_path / "results")
    specs = build_grid(["mtdt"], ["random-2:0"], ["near-optimal"], [3],
                       [*_run_args(data_dir), "--results-dir", results])
    codes = run_ray(specs, address=None, gpus_per_run=0)
    assert codes == {"random-2:0/near-optimal/mtdt/seed3": 0}
    path = run_dir(results, "random-2:0", "near-optimal", "mtdt", 3)
    assert is_finished(path)
    assert json.loads((path / "meta.json").read_text())["method"] == "mtdt"


@pytest.mark.parametrize("flag, value, message", [
    ("--methods", "nope", "unknown method 'nope'"),
    ("--suites", "mt7", "unknown suite 'mt7'"),
    ("--qualities", "great", "unknown quality 'great'"),
])
def test_sweep_rejects_bad_grids_before_running_anything(tmp_path, capsys, flag, value,
                                                         message):
    grid = {"--methods": "promptdt", "--suites": "mt5", "--qualities": "near-optimal"}
    grid[flag] = value
    argv = ["sweep", "--results-dir", str(tmp_path)]
    for key, val in grid.items():
        argv += [key, val]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
