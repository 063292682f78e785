"""Sweeps run each grid cell as its own `mtrl-bench run` process, locally or on Ray."""

import json

import pandas as pd
import pytest

from mtrl_bench.cli import build_parser, main, run_request
from mtrl_bench.plan import plan_run
from mtrl_bench.request import RunRequest
from mtrl_bench.runs.rundir import is_finished
from mtrl_bench.runs.runner import run_dir_of
from mtrl_bench.runs.sweep import build_grid, run_ray


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sweep-data"))


def _run_args(data_dir):
    return ["--preset", "tiny", "--data-dir", data_dir, "--no-progress"]


@pytest.mark.slow
def test_local_sweep_runs_the_grid_and_skips_finished_runs(tmp_path, data_dir, capsys):
    results = str(tmp_path / "results")
    argv = ["sweep", "--methods", "promptdt", "harmodt-r", "--suites", "random-2:0",
            "--seeds", "0", "--parallel", "2", "--results-dir", results, "--",
            *_run_args(data_dir)]
    assert main(argv) == 0
    paths = [run_dir_of(plan_run(m, "tiny", results=results)) for m in ("promptdt", "harmodt-r")]
    assert all(is_finished(p) for p in paths)
    assert "2 succeeded, 0 failed" in capsys.readouterr().out
    assert main(argv) == 0
    assert "2 already finished, 0 locked by another process, 0 to run" in capsys.readouterr().out
    # other settings are other cells: planned as new runs, never taken for these
    assert main(["sweep", "--methods", "promptdt", "harmodt-r", "--suites", "random-2:0",
                 "--seeds", "0", "--results-dir", results, "--dry-run", "--",
                 *_run_args(data_dir), "--gin_binding", "Run.budget_sequences = 80"]) == 0
    assert "0 already finished, 0 locked by another process, 2 to run" in capsys.readouterr().out


@pytest.mark.slow
def test_run_and_sweep_land_in_one_cell(tmp_path, data_dir, capsys):
    """`run` leaves --quality to the preset, `sweep` passes it: still one cell (n=2)."""
    results = str(tmp_path / "results")
    assert main(["run", "--method", "mtdt", *_run_args(data_dir), "--results-dir",
                 results]) == 0
    assert main(["sweep", "--methods", "mtdt", "--suites", "random-2:0", "--seeds", "0", "1",
                 "--results-dir", results, "--", *_run_args(data_dir)]) == 0
    assert "1 already finished, 0 locked by another process, 1 to run" in capsys.readouterr().out
    assert main(["table", "--results-dir", results, "--resamples", "100"]) == 0
    frame = pd.read_csv(tmp_path / "results" / "tables" / "table1.csv")
    assert frame["n"].tolist() == [2] and frame["row"].tolist() == ["mtdt"]
    assert "Runs left out: none." in capsys.readouterr().out


def test_grid_points_are_cells_and_apply_only_where_they_take_effect(tmp_path, data_dir,
                                                                     capsys):
    results = str(tmp_path / "results")
    assert main(["sweep", "--methods", "promptdt", "socodt", "--suites", "random-2:0",
                 "--seeds", "0", "1", "--grid", "socodt.beta_min=1,10",
                 "--grid", "Trainer.learning_rate=1e-4,3e-4", "--results-dir", results,
                 "--dry-run", "--", *_run_args(data_dir)]) == 0
    out = capsys.readouterr().out
    # promptdt: 2 learning rates x 2 seeds; socodt: 2 x 2 grid points x 2 seeds
    assert "sweep: 12 runs, 0 already finished, 0 locked by another process, 12 to run" in out
    assert "promptdt: --grid socodt.beta_min = 1 has no effect, not applied" in out
    commands = [line for line in out.splitlines() if line.startswith("  mtrl-bench run")]
    assert sum("socodt.beta_min = 10" in c and "--method socodt" in c for c in commands) == 4
    assert not any("beta_min" in c for c in commands if "--method promptdt" in c)
    for bad, message in (("socodt.beta_min", "expected NAME=V1,V2"),
                         ("socodt.beta_min=1,1", "repeats a value"),
                         ("SOCODT_BETA_MIN=1,10", "has no effect on any method of this sweep"),
                         ("socodt.update_interval=2,5", "the runner sets it"),
                         ("Run.seed=3,4", "the sweep sets it; use --seeds")):
        assert main(["sweep", "--methods", "socodt", "--suites", "mt5", "--grid", bad,
                     "--dry-run"]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("request_", [
    RunRequest("socodt"),
    RunRequest("promptdt", preset="tiny", gin_files=("a.gin", "b c.gin"),
               bindings=("Trainer.learning_rate = 1e-4", "socodt.beta_min = 3"),
               suite="random-3:7", quality="sub-optimal", seed=4, data="harmodt:/d",
               device="cpu", results_dir="r", data_dir="d", force=True, regenerate_data=True,
               wandb="offline", progress=False),
    RunRequest("socodt", threads=3, force=True, overwrite_committed=True),
])
def test_a_sweep_runs_each_request_as_the_command_line_that_makes_it(request_):
    """A sweep starts each run as `mtrl-bench run <request.command_args()>`: parsing them
    back must give the very same request."""
    args = build_parser().parse_args(["run", *request_.command_args()])
    assert run_request(args) == request_


@pytest.mark.parametrize("parallel, given, expected", [
    (1, [], 2), (2, [], 1), (4, [], 1), (2, ["--threads", "2"], 2)])
def test_parallel_cpu_runs_share_the_cores_instead_of_each_taking_all(
        tmp_path, capsys, monkeypatch, parallel, given, expected):
    """On this CPU (2 usable cores here; the share follows the cores the sweep may use),
    N runs at a time get max(1, cores / N) threads each unless --threads is given."""
    from mtrl_bench.runs import sweep

    monkeypatch.setattr(sweep, "_visible_gpus", lambda: [])
    monkeypatch.setattr("mtrl_bench.data.generation.default_workers", lambda: 2)
    assert main(["sweep", "--methods", "promptdt", "--suites", "mt5", "--seeds", "0", "1",
                 "--results-dir", str(tmp_path), "--parallel", str(parallel), "--dry-run",
                 "--", "--preset", "tiny", *given]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("  mtrl-bench run")]
    assert len(commands) == 2 and all(f"--threads {expected}" in c for c in commands), commands


def test_sweep_run_options_refuse_what_the_sweep_sets(capsys):
    for given in ("--seed", "--suite", "--method", "--quality"):
        assert main(["sweep", "--methods", "socodt", "--suites", "mt5", "--dry-run", "--",
                     given, "x"]) == 2
        assert f"{given} after '--': the sweep sets it; use {given}s" in capsys.readouterr().err
    assert main(["sweep", "--methods", "socodt", "--suites", "mt5", "--dry-run", "--",
                 "--presets", "tiny"]) == 2
    assert "unknown run option(s) after '--': --presets tiny" in capsys.readouterr().err
    assert main(["sweep", "--methods", "socodt", "--suites", "mt5", "--dry-run",
                 "--results-dir", "a", "--", "--results-dir", "b"]) == 2
    assert "--results-dir given twice with different folders" in capsys.readouterr().err


def test_local_executor_never_puts_two_runs_on_one_gpu(monkeypatch):
    """Runs of unequal length each take a free GPU from the visible ones and give it back."""
    import threading
    import time

    from mtrl_bench.runs import sweep

    lock, busy, seen = threading.Lock(), set(), []

    def fake_run(spec, env):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            assert gpu not in busy, f"{spec.label} got GPU {gpu}, already in use"
            busy.add(gpu)
            seen.append(gpu)
        time.sleep(0.05 if spec.request.seed % 3 else 0.2)
        with lock:
            busy.remove(gpu)
        return spec.label, 0

    monkeypatch.setattr(sweep, "_visible_gpus", lambda: ["4", "6"])
    monkeypatch.setattr(sweep, "_run_one", fake_run)
    specs = [sweep.RunSpec(RunRequest("promptdt", suite="mt5", quality="near-optimal",
                                      seed=seed)) for seed in range(8)]
    codes = sweep.run_local(specs)
    assert len(codes) == 8 and set(seen) == {"4", "6"}


@pytest.mark.slow
def test_ray_executor_runs_on_a_real_local_ray_instance(tmp_path, data_dir):
    pytest.importorskip("ray")
    results = str(tmp_path / "results")
    common = RunRequest("", preset="tiny", data_dir=data_dir, progress=False,
                        results_dir=results)
    specs = build_grid(["mtdt"], ["random-2:0"], ["near-optimal"], [3], common)
    codes = run_ray(specs, address=None, gpus_per_run=0)
    assert codes == {"random-2:0/near-optimal/mtdt/seed3": 0}
    path = run_dir_of(plan_run("mtdt", "tiny", bindings=["Run.seed = 3"], results=results))
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


@pytest.mark.slow
def test_sweep_regenerates_damaged_data_once_before_its_runs(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["data", "--suite", "random-2:0", "--quality", "near-optimal", "--episodes",
                 "6", "--episode-length", "60", "--workers", "1", "--data-dir", str(data),
                 "--no-progress"]) == 0
    damaged = sorted((data / "near-optimal").glob("*.npz"))[0]
    damaged.write_bytes(b"not a dataset")
    argv = ["sweep", "--methods", "promptdt", "--suites", "random-2:0", "--results-dir",
            str(tmp_path / "results"), "--", "--preset", "tiny", "--data-dir", str(data),
            "--no-progress"]
    assert main(argv) == 2  # refused before any run starts, naming the file
    assert f"{damaged}: truncated or corrupt" in capsys.readouterr().err
    assert main([*argv, "--regenerate-data"]) == 0
    err = capsys.readouterr().err
    assert err.count(f"regenerating {damaged.name.split('__')[0]} (asked for)") == 1
    assert err.count("generating 2 near-optimal task dataset(s)") == 1  # once, by the sweep
