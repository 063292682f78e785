"""End-to-end runs on the tiny preset: real Meta-World data, training, masks, evaluation."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from toolbox import default_sigint

from mtrl_bench.cli import main
from mtrl_bench.plan import plan_run
from mtrl_bench.runs.rundir import MetricsLog, is_finished
from mtrl_bench.runs.runner import run_dir_of

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


def _checkpointed_meta(path):
    """meta.json once the run made a checkpoint (it then holds its step and the wall time
    so far, written together), else None."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("checkpoint_step") else None


def _wait_for_checkpoint(path, proc, timeout_s=240):
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None and _checkpointed_meta(path) is None:
        time.sleep(0.05)


def _final(path):
    return json.loads((path / "final.json").read_text())


def _path(dirs, method, *bindings):
    """The directory `mtrl-bench run --method METHOD --preset tiny` plans (gin is global, so
    this re-parses; fine between runs)."""
    return run_dir_of(plan_run(method, "tiny", bindings=bindings, results=dirs["results"]))


@pytest.mark.slow
def test_end_to_end_run_writes_a_complete_run_directory(dirs, capsys):
    threads = torch.get_num_threads()
    assert _cli(dirs, "--method", "socodt", "--wandb", "offline", "--threads", "1") == 0
    assert torch.get_num_threads() == threads  # the run's threads end with the run
    path = _path(dirs, "socodt")
    assert path.parent.parent.name == "socodt" and path.name == "seed0"
    assert is_finished(path)
    final = _final(path)
    assert final["final"]["step"] == 20 and final["final"]["num_goals"] == 3
    assert set(final["final"]["success"]) == set(final["tasks"]) and len(final["tasks"]) == 2
    assert "best over evaluations" in final["best"]["label"]
    movement = final["masks"]  # how far the masks moved from their start, task overlap
    assert len(movement["moved"]) == 2 and all(0 <= m < 1 for m in movement["moved"])
    assert 0 < movement["overlap"] <= 1
    meta = json.loads((path / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["wall_time_s"] > 0 and meta["versions"]["torch"]
    numerics = meta["numerics"]  # what decides its floating-point results besides the code
    assert numerics["torch_threads"] == 1 and numerics["device"] == "cpu"
    assert numerics["cpu_capability"] and numerics["cpu_model"] and len(numerics["key"]) == 10
    assert meta["cell"] == path.parent.name
    assert set(meta["streams"]) == {"initial_weights", "batch_stream", "initial_masks"}
    assert meta["identity"]["method"]["alpha"] == 20.0  # code defaults are recorded too
    assert meta["identity"]["protocol"]["trainer.total_steps"] == 20
    assert meta["arguments"]["Trainer"]["learning_rate"] == 1e-4
    assert meta["role"] == {"role": "proposed", "ablation_of": None, "components": "S+A+M",
                            "order": 50}
    # what tables need to label the row without this code: a plain socodt run's identity
    assert meta["default_method_identity"] == {**meta["identity"]["method"]}
    assert list(meta)[:12] == ["method", "suite", "tasks", "quality", "seed", "preset",
                               "git_commit", "versions", "device", "numerics", "status",
                               "started"]  # the order meta.json has always had
    stages = meta["stage_seconds"]  # the wall time split by stage; the rest is start-up
    assert set(stages) == {"data", "training", "mask_updates", "evaluation", "final_evaluation",
                           "checkpoints"}
    assert all(stages[s] > 0 for s in ("training", "mask_updates", "evaluation",
                                       "final_evaluation", "checkpoints"))
    assert stages["mask_updates"] < stages["training"]
    assert sum(v for k, v in stages.items() if k != "mask_updates") < meta["wall_time_s"]
    log = MetricsLog(path / "metrics.jsonl")
    assert [r["step"] for r in log.records("eval")] == [10, 20]
    assert [r["step"] for r in log.records("train")] == [5, 10, 15, 20]  # the tiny preset logs
    masks = log.records("mask")
    assert [r["step"] for r in masks] == [6, 11, 16]  # steps completed when written
    assert all(len(r["sparsity"]) == 2 and r["beta"] is not None for r in masks)
    operative = (path / "config.gin").read_text()
    assert "socodt.alpha = 20.0" in operative and "Run.budget_sequences = 160" in operative
    assert "# (runner) Trainer.total_steps = 20" in operative
    assert list((path / "wandb").glob("offline-run-*")), "wandb offline run missing"
    out = capsys.readouterr().out
    assert "MEAN" in out and "results in" in out
    assert "s final, checkpoints" in out.splitlines()[-2]  # stage times under the summary

    # a finished run is not redone: not by the same command, nor by one that binds a value
    # to its default, changes only how the run is carried out, or replays its config.gin
    mtime = (path / "final.json").stat().st_mtime_ns
    for extra in ([], ["--gin_binding", "socodt.alpha = 20"],
                  ["--gin_binding", "Trainer.log_every = 7"],
                  ["--gin_file", str(path / "config.gin")]):
        assert _cli(dirs, "--method", "socodt", *extra) == 0
        assert "already finished" in capsys.readouterr().out, extra
    assert (path / "final.json").stat().st_mtime_ns == mtime
    # another setting is another run, in its own directory
    other = _path(dirs, "socodt", "socodt.alpha = 5.0")
    assert other.parent != path.parent and other.parent.parent == path.parent.parent
    assert not other.exists()


def test_kernel_environment_is_recorded_and_keys_the_numerics(monkeypatch):
    """A variable that forces other kernels (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS,
    ...) is recorded and changes the key; with none set the key is the hash of the key
    fields alone, as before the environment was recorded."""
    import hashlib

    from mtrl_bench.provenance import KERNEL_ENVIRONMENT, NUMERICS_KEY_FIELDS, numerics
    from mtrl_bench.runs.rundir import numerics_summary

    for name in KERNEL_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    plain = numerics(torch.device("cpu"))
    fields = json.dumps({name: plain[name] for name in NUMERICS_KEY_FIELDS}, sort_keys=True)
    assert plain["environment"] == {}
    assert plain["key"] == hashlib.sha256(fields.encode()).hexdigest()[:10]
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    forced = numerics(torch.device("cpu"))
    assert forced["environment"] == {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert forced["key"] != plain["key"]
    assert numerics_summary(forced).endswith(", MKL_ENABLE_INSTRUCTIONS=AVX2")
    assert "=" not in numerics_summary(plain)


@pytest.mark.parametrize("binding, message", [
    ("Trainer.total_steps = 5", "Trainer.total_steps has no effect: the runner sets it (from "
                                "Run.budget_sequences)"),
    ("socodt.update_interval = 2", "socodt.update_interval has no effect: the runner sets it"),
    ("Evaluator.num_goals = 10", "Evaluator.num_goals has no effect: the runner sets it"),
    ("harmodt_f.k_max = 3", "harmodt_f.k_max has no effect: this run builds only"),
    ("SOCODT_ALPHA = 3.0", "SOCODT_ALPHA has no effect: no parameter of this run reads it"),
    ("train/Trainer.learning_rate = 1.0", "runs enter no gin scope"),
    ("socodt_fixed.swap_count = 3", "socodt_fixed.swap_count has no effect"),
    ("socodt.log_fisher = 1", "socodt.log_fisher must be bool, got 1"),
    ("Run.seed = 3", None),  # with --seed 1 below: the two disagree
])
def test_bindings_that_would_not_take_effect_are_errors(dirs, capsys, binding, message):
    extra = ["--seed", "1"] if message is None else []
    message = message or "--seed 1 and the binding Run.seed = 3 disagree; give one of them"
    assert _cli(dirs, "--method", "socodt", "--gin_binding", binding, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_parameters_a_method_ignores_are_refused_and_not_part_of_its_identity(dirs, capsys):
    assert _cli(dirs, "--method", "socodt-fixed", "--gin_binding",
                "socodt_fixed.beta_min = 1.0") == 2
    assert ("socodt_fixed.beta_min has no effect: socodt-fixed does not use it"
            in capsys.readouterr().err)
    identity = plan_run("socodt-fixed", "tiny").identity["method"]
    assert "beta_min" not in identity and "q1" not in identity and identity["alpha"] == 20.0
    assert "alpha" not in plan_run("socodt-nomag", "tiny").identity["method"]


def test_identity_is_by_value():
    """Equal values, one identity: explicit defaults, ints for floats, macro or direct."""
    base = plan_run("socodt", "tiny")
    for bindings in (["socodt.beta_min = 5"], ["BETA = 5.0", "socodt.beta_min = %BETA"],
                     ["Run.quality = 'near-optimal'"], ["Trainer.learning_rate = 0.0001"],
                     ["Evaluator.workers = 2", "Run.checkpoint_every_steps = 3"]):
        assert plan_run("socodt", "tiny", bindings=bindings).identity == base.identity
    changed = plan_run("socodt", "tiny", bindings=["socodt.beta_min = 6"])
    assert changed.identity["method"]["beta_min"] == 6.0 and changed.cell != base.cell
    # the seed makes a replicate of the same cell
    assert plan_run("socodt", "tiny", bindings=["Run.seed = 3"]).cell == base.cell
    # one suite, one spelling; its task list is part of the identity
    assert plan_run("socodt", "tiny", overrides={"suite": "random-02:00"}).cell == base.cell
    assert base.identity["protocol"]["dataset.tasks"] == ["peg-insert-side-v3",
                                                          "stick-pull-v3"]
    # what the trainer computes in is part of it (bf16 on CUDA only): same here on a CPU
    assert plan_run("socodt", "tiny", bindings=["Trainer.bf16 = False"]).cell == base.cell


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(dirs):
    """SIGKILL mid-training, rerun: the final result equals an uninterrupted run's."""
    env = _subprocess_env(dirs)
    args = [sys.executable, "-m", "mtrl_bench", "run", "--method", "harmodt-f", *TINY]
    path = run_dir_of(plan_run("harmodt-f", "tiny", bindings=["Run.seed = 2"],
                               results=dirs["results"]))
    proc = subprocess.Popen([*args, "--seed", "2"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(path, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (path / "checkpoint.pt").exists() and not is_finished(path)
    killed_wall = _checkpointed_meta(path)["wall_time_s"]
    subprocess.run([*args, "--seed", "2"], env=env, check=True, capture_output=True)
    resumed = _final(path)
    resumed_meta = json.loads((path / "meta.json").read_text())
    assert resumed_meta["wall_time_s"] > killed_wall > 0
    assert resumed_meta["stage_seconds"]["training"] > 0
    steps = [r["step"] for r in MetricsLog(path / "metrics.jsonl").records()]
    assert steps == sorted(steps), "the resume left records of lost work in metrics.jsonl"
    subprocess.run([*args, "--seed", "2", "--force"], env=env, check=True, capture_output=True)
    assert resumed["final"] == _final(path)["final"]


@pytest.mark.slow
def test_ctrl_c_marks_the_run_interrupted_and_the_same_command_resumes_it(dirs):
    """SIGINT after the first checkpoint: exit 130 at once, meta.json says interrupted (not
    running), stderr says where it resumes from, and the rerun finishes it."""
    env = _subprocess_env(dirs)
    args = [sys.executable, "-m", "mtrl_bench", "run", "--method", "promptdt", *TINY,
            "--seed", "3"]
    path = run_dir_of(plan_run("promptdt", "tiny", bindings=["Run.seed = 3"],
                               results=dirs["results"]))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)
    _wait_for_checkpoint(path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    meta = json.loads((path / "meta.json").read_text())
    assert proc.returncode == 130, err
    assert meta["status"] == "interrupted" and not is_finished(path)
    assert f"the same command resumes it from its checkpoint at step {meta['checkpoint_step']}" \
        in err
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stdout and is_finished(path)


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'; valid: "),
    (["--method", "socodt", "--suite", "mt7"], "unknown suite 'mt7'; valid: mt5"),
    (["--method", "socodt", "--quality", "great"], "unknown quality 'great'; valid: "),
    (["--method", "socodt", "--gin_binding", "Nope.x = 1"], "bad gin configuration: "),
    (["--method", "socodt", "--preset", "huge"], "unknown preset 'huge'; valid: "),
    (["--method", "socodt", "--gin_binding", "Run.seed = 'a'"], "Run.seed must be int, got 'a'"),
    (["--method", "socodt", "--gin_binding", "Run.batch_size = 0"],
     "Run.batch_size must be >= 1, got 0"),
    (["--method", "socodt", "--seed", "-1"], "Run.seed must be >= 0, got -1"),
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
