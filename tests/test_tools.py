"""The benchmark and cross-check scripts in tools/ run end to end at toy sizes.

Their figures are not checked here (speed goals are for the benchmarks themselves, on the
target machine); this keeps the scripts from rotting as the code under them changes.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from toolbox import HANG_GUARD_S, TOOLS, tool_module


def run_tool(name: str, *args: str, tmp_path: Path,
             timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    env_args = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": timeout}
    return subprocess.run([sys.executable, str(TOOLS / name), *args], **env_args)


@pytest.mark.slow
@pytest.mark.parametrize("name, args, expected", [
    ("bench_train.py", ["--preset", "tiny", "--tasks", "2", "--device", "cpu", "--steps", "1",
                        "--warmup", "1", "--no-reference", "--methods", "promptdt",
                        "--aggregators", "--episodes", "2"],
     ["upgrad", "nash-mtl", "rlw", "x PCGrad"]),
    ("bench_train.py", ["--preset", "tiny", "--tasks", "2", "--device", "cpu", "--count-ops",
                        "--methods", "promptdt", "harmodt-f", "socodt", "--episodes", "2"],
     ["operator calls per training step", "harmodt-f", "capture adds"]),
    ("bench_masks.py", ["--model", "tiny", "--tasks", "2", "--device", "cpu", "--repeats", "1",
                        "--warmup", "0"],
     ["socodt-fixed", "harmodt-f", "median_ms"]),
    ("bench_eval.py", ["--tasks", "1", "--goals", "2", "--max-steps", "10", "--workers", "1",
                       "--n-layer", "1", "--n-embd", "16", "--n-head", "1", "--n-inner", "32",
                       "--repeat", "1", "--no-async"],
     ["evaluator + policy", "naive sequential batch-1", "evaluator / naive batch-1"]),
    ("crosscheck_eval.py", ["--tasks", "reach-v3", "--goals", "2", "--max-steps", "40",
                            "--episodes", "4", "--train-steps", "4", "--workers", "1"],
     ["scripted expert", "ALL AGREE"]),
    ("bench_sweep.py", ["--preset", "tiny", "--runs", "1", "--parallel", "2"],
     ["--parallel 2, ", "--parallel 2, torch default threads/run", "x runs/hour"]),
])
def test_tool_runs(tmp_path, name, args, expected):
    result = run_tool(name, *args, tmp_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for text in expected:
        assert text in result.stdout, output[-3000:]
    assert "Traceback" not in output and "Path not found" not in output


@pytest.mark.slow
def test_datagen_benchmark_runs(tmp_path):
    """--goal 0: a busy test machine may miss the speed goal; the script must still work."""
    result = run_tool("bench_datagen.py", "--suite", "random-1:0", "--episodes", "2",
                      "--episode-length", "20", "--workers", "1", "--goal", "0",
                      tmp_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "generator / raw same work" in result.stdout, output[-3000:]


def test_reference_iteration_updates_only_the_task_s_active_entries():
    """The reference loop bench_train.py compares with trains one task on its own masks."""
    from mtrl_bench.method import build_method
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

    bench = tool_module("bench_train")
    config = PromptDTConfig(n_layer=1, n_head=1, n_embd=16, n_inner=32, dropout=0.0,
                            context_len=5, prompt_len=2)
    trainer = Trainer(bench.synthetic_datasets(2, 3, length=20), build_method("harmodt-f"),
                      device="cpu", model_config=config, batch_size=2, warmup_steps=1)
    before = trainer.model.maskable_flat()
    embedding = trainer.model.embed_state.weight.detach().clone()
    loss = bench.reference_iteration(trainer, 0)
    after = trainer.model.maskable_flat()
    active = trainer.masks.values[0] == 1
    assert isinstance(loss, float)
    assert torch.equal(after[~active], before[~active])
    assert (after[active] != before[active]).float().mean() > 0.5
    assert not torch.equal(trainer.model.embed_state.weight, embedding)


def test_count_ops_counts_one_step_deterministically():
    """--count-ops: the same step counts the same every time; masks add a few operator calls
    per masked parameter (the fused path), not one set of masking ops per parameter and task
    (the per-parameter path added about 10.7 per parameter)."""
    from mtrl_bench.method import build_method
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

    bench = tool_module("bench_train")
    config = PromptDTConfig(n_layer=2, n_head=1, n_embd=16, n_inner=32, dropout=0.1,
                            context_len=4, prompt_len=2)
    datasets = bench.synthetic_datasets(2, 2, length=20)

    def counts(method):
        trainer = Trainer(datasets, build_method(method), device="cpu", model_config=config,
                          batch_size=2, warmup_steps=1)
        return bench.count_step_ops(trainer), len(trainer.model.mask_segments)

    (plain, _), (masked, segments) = counts("promptdt"), counts("socodt")
    assert counts("socodt")[0] == masked  # deterministic
    step = masked["step"]
    assert step["total"] == step["views"] + step["non_view"] > plain["step"]["total"]
    assert step["total"] - plain["step"]["total"] < 5 * segments
    assert 0 < masked["capture_extra"] < 10 and "capture_extra" not in plain


def test_gpu_report_stops_a_step_and_its_workers_at_its_limit(tmp_path):
    """One slow step cannot eat the lease: its whole process group is killed at its limit,
    what it wrote so far is kept, and the report goes on."""
    report = tool_module("gpu_report")
    marker = tmp_path / "partial.json"
    child = ("import subprocess, sys, time, json, pathlib; "
             f"pathlib.Path({str(marker)!r}).write_text(json.dumps({{'done': 1}})); "
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             "time.sleep(60)")
    step = report.Step("slow", "a slow step", 2, [sys.executable, "-c", child], marker)
    with open(tmp_path / "log", "w") as log:
        report.run_step(step, 2, tmp_path, log)
    assert step.status == "stopped at its 2 s limit" and step.seconds < 30
    assert step.result == {"done": 1}
    sleepers = subprocess.run(["pgrep", "-f", "time.sleep\\(60\\)"], capture_output=True,
                              text=True).stdout.split()
    assert not sleepers, "a worker of the stopped step survived"


def test_gpu_report_goals_are_judged_from_the_figures():
    report = tool_module("gpu_report")
    steps = {
        "train-eager": report.Step("train-eager", "", 1, [], None, "ok", 1, {
            "methods": {"harmodt-f": {"sequences_per_s": 40_000},
                        "socodt": {"sequences_per_s": 20_000}},
            "reference": {"sequences_per_s": 500}}),
        "mask-updates": report.Step("mask-updates", "", 1, [], None, "ok", 1, {
            "methods": [{"method": "harmodt-f", "median_ms": 60.0},
                        {"method": "socodt", "median_ms": 100.0}]}),
    }
    verdicts = {goal: verdict for goal, _, verdict in report.goal_rows(steps)}
    assert verdicts == {
        "harmodt-f: >= 35,000 sequences/s (target 60,000)": "met",
        "harmodt-f: >= 70x the reference loop": "met",
        "socodt: >= 35,000 sequences/s (target 60,000)": "MISSED",
        "socodt: >= 70x the reference loop": "MISSED",
        "harmodt-f mask update < 50 ms": "MISSED",
        "socodt mask update < 150 ms": "met",
    }


@pytest.mark.slow
def test_gpu_report_smoke_runs_every_step(tmp_path):
    out = tmp_path / "report"
    result = run_tool("gpu_report.py", str(out), "--smoke", tmp_path=tmp_path, timeout=1800)
    output = result.stdout + result.stderr
    log = (out / "report.log").read_text() if (out / "report.log").exists() else ""
    assert result.returncode == 0, (output + log)[-4000:]
    report = json.loads((out / "report.json").read_text())
    steps = report["steps"]
    assert {s["status"] for s in steps.values()} == {"ok"}, log[-4000:]
    assert set(steps["train-eager"]["result"]["methods"]) == {"promptdt", "harmodt-f", "socodt"}
    assert steps["train-eager"]["result"]["reference"]["sequences_per_s"] > 0
    assert "harmodt-f" in steps["train-eager"]["result"]["profiles"]
    assert [m["method"] for m in steps["mask-updates"]["result"]["methods"]] == [
        "harmodt-f", "socodt"]
    assert steps["evaluation"]["result"]["share_of_raw"] > 0
    e2e = steps["end-to-end"]["result"]
    assert e2e["status"] == "finished" and e2e["stage_seconds"]["final_evaluation"] > 0
    assert set(e2e["success"]) and e2e["mask_updates"] > 0
    text = (out / "report.md").read_text()
    for heading in ("**Training**", "**One mask update**", "**Evaluation**", "**End to end**"):
        assert heading in text
    for line in ("harmodt-f / reference loop", "reference loop (fp32)", "socodt mask update"):
        assert line in log  # bench_train's printed table (its default run, here at toy size)


def _write_run(path: Path, losses: dict[int, float], evals: list[dict],
               episodes: list[dict] | None = None, final_step: int | None = None) -> Path:
    path.mkdir(parents=True)
    records = [{"kind": "train", "step": s, "loss": x} for s, x in losses.items()]
    records += [{"kind": "eval", **e} for e in evals]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if episodes is not None:
        (path / "episodes.json").write_text(json.dumps(episodes))
        (path / "final.json").write_text(json.dumps({"final": {"step": final_step}}))
    return path


def test_compare_trajectories_finds_where_two_runs_part(tmp_path):
    """E1's check: a longer run agrees with a shorter one on every common record, and the
    first differing loss or evaluation is named; a 50-goal final evaluation is compared
    with the other run's 2-goal one through its episodes."""
    compare = tool_module("compare_trajectories").compare
    episodes = [{"task": "reach-v3", "goal": g, "success": g == 0, "episode_return": 10.0 + g}
                for g in range(50)]
    first_two = {"step": 4, "num_goals": 2, "success": {"reach-v3": 0.5},
                 "return": {"reach-v3": 10.5}}
    short = _write_run(tmp_path / "short", {2: 0.5, 4: 0.25},
                       [{"step": 2, "num_goals": 2, "success": {"reach-v3": 0.0},
                         "return": {"reach-v3": 3.0}},
                        {"step": 4, "num_goals": 50, "success": {"reach-v3": 0.02},
                         "return": {"reach-v3": 34.5}}], episodes, final_step=4)
    long = _write_run(tmp_path / "long", {2: 0.5, 4: 0.25, 6: 0.125},
                      [{"step": 2, "num_goals": 2, "success": {"reach-v3": 0.0},
                        "return": {"reach-v3": 3.0}}, first_two])
    lines = compare(short, long)
    assert lines[0].startswith("training losses: 2 of 2") and lines[-1].startswith("AGREE")
    assert "goals 0-1" in lines[2] and "successes equal" in lines[2]

    parted = _write_run(tmp_path / "parted", {2: 0.5, 4: 0.2500001},
                        [{"step": 2, "num_goals": 2, "success": {"reach-v3": 0.0},
                          "return": {"reach-v3": 3.0000001}}])
    lines = compare(short, parted)
    assert lines[-1] == "DIFFER from step 2" and "returns differ" in lines[-2]
    assert "first differing loss at step 4" in lines[1]
    assert compare(short, parted, up_to=0)[-1].startswith("AGREE")  # nothing in common
    result = run_tool("compare_trajectories.py", str(short), str(parted), tmp_path=tmp_path)
    assert result.returncode == 1 and "DIFFER from step 2" in result.stdout


def test_training_trends_reads_the_last_interval_of_each_run(tmp_path):
    """E1's convergence numbers: the fixed-goal change over the last evaluation interval
    (the final point from episodes.json) and the mean logged loss of the last interval
    against the one before, per run and counted per cell; --where keeps one protocol."""
    from synthetic_runs import EVAL_GOALS, TASKS, build, main_runs

    tool = tool_module("training_trends")
    runs = build(tmp_path / "runs")
    socodt = main_runs(runs, "socodt", "near-optimal")
    losses = {150: 0.9, 250: 0.5, 300: 0.5, 350: 0.4, 400: 0.3}  # evaluations at 300, 400
    with open(socodt[0].path / "metrics.jsonl", "a") as f:
        for step, loss in losses.items():
            f.write(json.dumps({"kind": "train", "step": step, "loss": loss}) + "\n")
    # seed 1 at step 300 and at the end: 0, 0, 0, 1, 2 of the 5 goals of each task; the
    # periodic record's mean over tasks is 0.12000000000000002, the episodes' 0.12: "level"
    path = socodt[1].path / "episodes.json"
    episodes = json.loads(path.read_text())
    for e in episodes:
        e["success"] = e["goal"] < max(0, TASKS.index(e["task"]) - 2)
    path.write_text(json.dumps(episodes))
    metrics = socodt[1].path / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    for r in records:
        if r["kind"] == "eval" and r["step"] == 300:
            r["mean_success"] = float(np.mean([0.0, 0.0, 0.0, 0.2, 0.4]))
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    cells = dict(((cell.column.label, cell.row.label), found)
                 for cell, found in tool.trends(tmp_path / "runs", {}))
    found = cells[("MT5 near-optimal [1]", "socodt")]
    assert [t.seed for t in found] == [0, 1, 2, 3, 4]
    assert found[1].last_change == 0.0 and found[1].success_trend == "level"
    for trend, run in list(zip(found, socodt))[::2]:
        final = np.mean([(g * 0.6180339887) % 1 < rate for rate in run.success
                         for g in range(EVAL_GOALS)])  # goals 0-4 of the final evaluation
        periodic = np.clip(run.success - 0.1, 0, 1).mean()  # the fabricated one at step 300
        assert trend.last_change == pytest.approx(final - periodic)
        assert trend.final_success == pytest.approx(run.success.mean())
    assert (found[0].loss_before, found[0].loss_last) == (0.5, pytest.approx(0.35))
    assert found[0].loss_trend == "falling" and found[1].loss_trend == "unknown"
    summary = tool.report([(c, f) for c, f in tool.trends(tmp_path / "runs", {})
                           if c.row.label == "socodt" and c.column.label.endswith("[1]")])[-1]
    counts = {k: sum(t.success_trend == k for t in found) for k in ("rising", "level", "falling")}
    assert f"{counts['rising']} rising, {counts['level']} level, {counts['falling']} falling" \
        in summary and "loss: 1 falling" in summary
    other = tool.trends(tmp_path / "runs", tool.parse_where(["run.budget_sequences=8000000"]))
    assert [(c.row.label, len(f)) for c, f in other] == [("promptdt", 1)]
