"""The GPU speed report: every paper-scale speed claim measured in one prepared command.

GPU leases here are short (about 15 minutes, 10 per command), so this runs the existing
benchmarks in order, each as its own process with its own time limit, so one slow step
cannot eat the rest (a step stopped at its limit keeps what it measured so far):

1. training: batched masked trainer vs the HarmoDT-shaped reference loop, ``paper`` model,
   MT50, B = 8, bf16, for promptdt, harmodt-f and socodt, eager, with a torch.profiler table
   of harmodt-f steps                                                (tools/bench_train.py)
2. one mask update of harmodt-f and socodt at paper size, 50 x 4.74M  (tools/bench_masks.py)
3. evaluation: MT50 x ``--eval-goals`` goals x 500 steps, paper model in bf16, vs raw
   stepping of the same actions and a naive batch-1 loop            (tools/bench_eval.py)
4. end to end: ``mtrl-bench run --method socodt --suite mt50`` at reduced scale (10
   episodes per task generated on all cores, 500k sequences, one periodic evaluation on
   10 goals, the final one on all 50), timed by stage, with its per-task success
5. training of harmodt-f and socodt as in 1 with ``Trainer.compile = True`` (last: its
   compilation time is the least predictable, and compiling is optional; Prompt-DT
   compiled is left out, measured twice: 24.4k and 22.5k sequences/s)

and writes ``report.json``, ``report.md`` (figures for results/BENCHMARKS.md, with date,
device and the goals met or missed) and ``report.log`` (every step's output) to OUT_DIR.
``--smoke`` runs the same steps at toy size on the CPU (a test runs it).

    python tools/gpu_report.py OUT_DIR                 # on the GPU host (at most 540 s)
    python tools/gpu_report.py OUT_DIR --smoke         # anywhere, toy sizes, CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
TRAIN_METHODS = ("promptdt", "harmodt-f", "socodt")
MASK_METHODS = ("harmodt-f", "socodt")
SMOKE_LIMIT_S = 600  # per step with --smoke: a busy 2-core CI machine, not a speed check
# issue "GPU: prove the paper-scale speed": (what, goal, target) on one H100
GOALS = {"sequences_per_s": 35_000, "sequences_per_s_target": 60_000, "vs_reference": 70,
         "harmodt_update_ms": 50, "tamu_update_ms": 150, "mt50_eval_minutes": 5,
         "mt50_eval_target_s": 90, "share_of_raw": 0.70}


@dataclass
class Step:
    name: str
    title: str
    limit_s: float
    argv: list[str]
    json_path: Path | None = None
    status: str = "not run"
    seconds: float = 0.0
    result: dict = field(default_factory=dict)


def environment() -> dict:
    """Device, driver, library versions and the host's cores."""
    import torch

    from mtrl_bench.provenance import git_commit, versions

    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(), "cpu_cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "versions": versions(), "git_commit": git_commit()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()})", driver=None)
    return info


def plan_steps(args, work: Path) -> list[Step]:
    """The commands, at full size or (``--smoke``) toy size on the CPU."""
    py = sys.executable
    smoke = args.smoke
    device = ["--device", "cpu"] if smoke else ["--device", "cuda"]
    train_size = (["--preset", "tiny", "--tasks", "3", "--batch", "4", "--steps", "3",
                   "--warmup", "2", "--reference-iterations", "6", "--update-repeats", "2",
                   "--episodes", "2", "--threads", "1"] if smoke else
                  ["--preset", "paper", "--tasks", "50", "--batch", "8", "--bf16"])
    train = [py, str(TOOLS / "bench_train.py"), *train_size, *device]
    masks = [py, str(TOOLS / "bench_masks.py"), *device, "--methods", *MASK_METHODS,
             *(["--model", "tiny", "--tasks", "3", "--repeats", "2", "--warmup", "1"]
               if smoke else ["--model", "paper", "--tasks", "50"])]
    evaluation = [py, str(TOOLS / "bench_eval.py"), "--lean", "--naive-episodes", "1",
                  *(["--tasks", "2", "--goals", "2", "--max-steps", "20", "--workers", "2",
                     "--n-layer", "1", "--n-embd", "16", "--n-head", "1", "--n-inner", "32",
                     "--device", "cpu"] if smoke else
                    ["--tasks", "50", "--goals", str(args.eval_goals), "--max-steps", "500",
                     "--device", "cuda", "--bf16", "--workers", str(os.cpu_count())])]
    run = [py, "-m", "mtrl_bench", "run", "--method", "socodt", "--no-progress",
           "--results-dir", str(work / "results"), "--data-dir", str(work / "data"),
           *(["--preset", "tiny"] if smoke else
             ["--preset", "paper", "--suite", "mt50",
              "--gin_binding", f"Run.episodes = {args.episodes}",
              "--gin_binding", f"Run.budget_sequences = {args.budget_sequences}",
              "--gin_binding", f"Run.eval_every_sequences = {args.budget_sequences // 2}",
              "--gin_binding", "Run.eval_goals = 10",
              "--gin_binding", "Run.final_eval_goals = 50"])]
    # compiling is last: it is optional (Trainer.compile is off by default) and its time
    # (compilation first) is the least predictable, so it must not starve the others
    steps = [
        Step("train-eager", "training, eager", 75,
             [*train, "--methods", *TRAIN_METHODS, "--profile", "harmodt-f"],
             work / "train-eager.json"),
        Step("mask-updates", "one mask update", 30, masks, work / "mask-updates.json"),
        Step("evaluation", "evaluation", 100, evaluation, work / "evaluation.json"),
        Step("end-to-end", "end to end: mtrl-bench run --method socodt", 320, run),
        Step("train-compiled", "training, Trainer.compile = True", 160,
             [*train, "--methods", *MASK_METHODS, "--compile", "--no-reference"],
             work / "train-compiled.json"),
    ]
    for step in steps:
        if step.json_path is not None:
            step.argv += ["--json", str(step.json_path)]
        if smoke:  # the limits are sized for the GPU host; a smoke run only checks the code
            step.limit_s = SMOKE_LIMIT_S
    return [s for s in steps if s.name not in args.skip]


def run_step(step: Step, limit: float, work: Path, log) -> None:
    """Run one step in its own process group, stopped (all its workers too) at ``limit``."""
    log.write(f"\n===== {step.name}: {shlex.join(step.argv)} (limit {limit:.0f} s)\n")
    log.flush()
    print(f"[{step.name}] limit {limit:.0f} s ...", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(step.argv, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        code = proc.wait(timeout=limit)
        step.status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        step.status = f"stopped at its {limit:.0f} s limit"
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    step.seconds = time.perf_counter() - started
    if step.json_path is not None and step.json_path.exists():  # written atomically
        step.result = json.loads(step.json_path.read_text())
    print(f"[{step.name}] {step.status} after {step.seconds:.0f} s", flush=True)


def end_to_end_result(work: Path) -> dict:
    """The run's stage times, training rate and final per-task success, from its files."""
    from mtrl_bench.io import read_json
    from mtrl_bench.runs.rundir import MetricsLog

    metas = sorted((work / "results").glob("runs/**/meta.json"))
    if not metas:
        return {}
    path = metas[0].parent
    meta = read_json(metas[0])
    out = {"run_dir": str(path.relative_to(work)), "status": meta.get("status"),
           "wall_time_s": meta.get("wall_time_s"), "stage_seconds": meta.get("stage_seconds"),
           "total_steps": meta.get("total_steps"),
           "sequences_per_step": meta.get("sequences_per_step"), "device": meta.get("device")}
    log = MetricsLog(path / "metrics.jsonl")
    rates = [r["sequences_per_s"] for r in log.records("train")][1:]
    if rates:  # the first interval holds the warm-up (allocation, kernel selection)
        out["training_sequences_per_s"] = sum(rates) / len(rates)
    out["mask_updates"] = len(log.records("mask"))
    if (path / "final.json").exists():
        final = read_json(path / "final.json")["final"]
        out.update(mean_success=final["mean_success"], num_goals=final["num_goals"],
                   success=final["success"])
    return out


def goal_rows(steps: dict[str, Step]) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for every goal whose figure was measured."""
    rows = []

    def check(goal: str, value, text: str, met: bool) -> None:
        if value is not None:
            rows.append((goal, text, "met" if met else "MISSED"))

    eager = steps.get("train-eager")
    methods = eager.result.get("methods", {}) if eager else {}
    reference = (eager.result.get("reference") or {}).get("sequences_per_s") if eager else None
    compiled = steps.get("train-compiled")
    compiled_methods = compiled.result.get("methods", {}) if compiled else {}
    for method in MASK_METHODS:
        rates = [r["sequences_per_s"] for r in (methods.get(method), compiled_methods.get(method))
                 if r]
        if rates:
            best = max(rates)
            check(f"{method}: >= {GOALS['sequences_per_s']:,} sequences/s (target "
                  f"{GOALS['sequences_per_s_target']:,})", best, f"{best:,.0f}",
                  best >= GOALS["sequences_per_s"])
            if reference:
                check(f"{method}: >= {GOALS['vs_reference']}x the reference loop", best,
                      f"{best / reference:.1f}x", best / reference >= GOALS["vs_reference"])
    masks = steps.get("mask-updates")
    for row in masks.result.get("methods", []) if masks else []:
        limit = GOALS["harmodt_update_ms" if row["method"] == "harmodt-f" else "tamu_update_ms"]
        check(f"{row['method']} mask update < {limit} ms", row["median_ms"],
              f"{row['median_ms']:.1f} ms", row["median_ms"] < limit)
    evaluation = steps.get("evaluation")
    share = evaluation.result.get("share_of_raw") if evaluation else None
    check(f"evaluator >= {GOALS['share_of_raw']:.0%} of raw stepping", share,
          f"{share:.1%}" if share is not None else "", (share or 0) >= GOALS["share_of_raw"])
    e2e = steps.get("end-to-end")
    final_s = ((e2e.result.get("stage_seconds") or {}).get("final_evaluation")
               if e2e and e2e.result.get("num_goals") == 50 else None)
    check(f"MT50 x 50-goal evaluation < {GOALS['mt50_eval_minutes']} min (target "
          f"{GOALS['mt50_eval_target_s']} s; the end-to-end run's final evaluation)", final_s,
          f"{final_s:.0f} s" if final_s is not None else "",
          (final_s or 0) < 60 * GOALS["mt50_eval_minutes"])
    return rows


def markdown(env: dict, steps: dict[str, Step], command: str, smoke: bool) -> str:
    from tabulate import tabulate

    lines = [f"### {'SMOKE (toy sizes, CPU): ' if smoke else ''}{env['device']}, "
             f"{env['date'][:10]}",
             "",
             f"Command: `{command}`. Device {env['device']}, driver {env.get('driver')}, "
             f"torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}, "
             f"{env['cpu_cores']} CPU cores, mtrl-bench commit {env.get('git_commit')}.",
             "",
             tabulate([(s.name, s.status, f"{s.seconds:.0f}", f"{s.limit_s:.0f}")
                       for s in steps.values()],
                      headers=["step", "status", "seconds", "limit s"], tablefmt="github"),
             ""]
    eager, compiled = steps.get("train-eager"), steps.get("train-compiled")
    if eager and eager.result:
        r = eager.result
        reference = r.get("reference", {}).get("sequences_per_s")
        compiled_methods = compiled.result.get("methods", {}) if compiled else {}
        rows = []
        for method, m in r.get("methods", {}).items():
            c = compiled_methods.get(method, {})
            rows.append((method, f"{m['sequences_per_s']:,.0f}",
                         f"{c['sequences_per_s']:,.0f}" if c else "-",
                         f"{m['sequences_per_s'] / reference:.1f}x" if reference else "-",
                         f"{m['peak_mib']:,.0f}",
                         f"{m['mask_update_ms']:.1f}" if "mask_update_ms" in m else "-"))
        if reference:
            rows.append(("reference loop (fp32)", f"{reference:,.0f}", "-", "1.0x",
                         f"{r['reference']['peak_mib']:,.0f}", "-"))
        lines += [f"**Training** ({r['preset']} model, {r['tasks']} tasks x {r['batch']} "
                  f"sequences, bf16 {'on' if r['bf16'] else 'off'}; tools/bench_train.py):", "",
                  tabulate(rows, headers=["method", "sequences/s eager", "compiled",
                                          "eager / reference", "peak MiB (eager)",
                                          "mask update ms (in trainer)"], tablefmt="github"),
                  ""]
        for method, table in r.get("profiles", {}).items():
            lines += [f"torch.profiler, 5 training steps of {method} (eager):", "", "```",
                      table.strip(), "```", ""]
    masks = steps.get("mask-updates")
    if masks and masks.result:
        r = masks.result
        lines += [f"**One mask update** ({r['tasks']} tasks x {r['entries']:,} entries; "
                  "tools/bench_masks.py):", "",
                  tabulate([(m["method"], f"{m['median_ms']:.1f}", f"{m['min_ms']:.1f}",
                             "-" if m["peak_extra_gib"] is None else f"{m['peak_extra_gib']:.2f}")
                            for m in r["methods"]],
                           headers=["method", "median ms", "min ms", "peak extra GiB"],
                           tablefmt="github"), ""]
    evaluation = steps.get("evaluation")
    if evaluation and evaluation.result:
        r = evaluation.result
        lines += [f"**Evaluation** ({r['tasks']} tasks x {r['goals']} goals x {r['max_steps']} "
                  f"steps, {r['workers']} worker processes, policy on {r['device']}"
                  f"{' in bf16' if r['bf16'] else ''}; tools/bench_eval.py --lean):", "",
                  tabulate([(name, f"{rate:,.0f}") for name, rate in r["rates"].items()],
                           headers=["", "env steps/s"], tablefmt="github"), "",
                  f"Evaluator / raw stepping: {r['share_of_raw']:.1%}; / naive batch-1: "
                  f"{r['vs_naive']:.1f}x; policy {r['policy_ms_per_step']:.1f} ms per step of "
                  f"all envs; start-up {r['start_up_s']:.1f} s; MT50 x 50 goals at this rate: "
                  f"{r['mt50_50_goal_minutes']:.1f} min.", ""]
    e2e = steps.get("end-to-end")
    if e2e and e2e.result:
        r = e2e.result
        stages = r.get("stage_seconds") or {}
        other = (r.get("wall_time_s") or 0) - sum(v for k, v in stages.items()
                                                   if k != "mask_updates")
        lines += [f"**End to end** (`mtrl-bench run --method socodt`, {r.get('total_steps')} "
                  f"steps x {r.get('sequences_per_step')} sequences, status {r.get('status')}, "
                  f"device {r.get('device')}): wall {r.get('wall_time_s') or 0:.0f} s", "",
                  tabulate([*((k, f"{v:.1f}") for k, v in stages.items()),
                            ("start-up and other", f"{other:.1f}")],
                           headers=["stage", "seconds"], tablefmt="github"), ""]
        if "training_sequences_per_s" in r:
            lines += [f"Training rate in the run: {r['training_sequences_per_s']:,.0f} "
                      f"sequences/s (mean of the logged intervals after the first); "
                      f"{r['mask_updates']} mask updates.", ""]
        if "success" in r:
            lines += [f"Final mean success {100 * r['mean_success']:.1f}% on {r['num_goals']} "
                      "goals per task:", "",
                      tabulate([(t, f"{100 * v:.0f}") for t, v in r["success"].items()],
                               headers=["task", "success %"], tablefmt="github"), ""]
    rows = goal_rows(steps)
    if rows and not smoke:
        lines += ["**Goals** (issue: one H100, paper model, MT50):", "",
                  tabulate(rows, headers=["goal", "measured", ""], tablefmt="github"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="where report.json/.md/.log are written")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="all steps together stop by then (default 540 s: a 10-minute "
                             "command with the wheel install and a margin; --smoke: 3000)")
    parser.add_argument("--commit", default=None,
                        help="the code's git commit, for a copy of the checkout without .git")
    parser.add_argument("--skip", nargs="+", default=[],
                        choices=("train-eager", "train-compiled", "mask-updates", "evaluation",
                                 "end-to-end"), help="steps to leave out")
    parser.add_argument("--eval-goals", type=int, default=10,
                        help="goals per task in step 3 (default 10: 250k steps; the full "
                             "50-goal evaluation is step 4's final one)")
    parser.add_argument("--episodes", type=int, default=10,
                        help="step 4: episodes per task generated (default 10: 20 took 79 s "
                             "of 16 cores on the H200 host, 40 took 128 s on the H100 host)")
    parser.add_argument("--budget-sequences", type=int, default=500_000,
                        help="step 4: training budget (default 500k: with 1M the run "
                             "reached its final evaluation only after 256 s)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="scratch folder for data, runs and step outputs (default: a "
                             "temporary one)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "tools/gpu_report.py", *(argv or sys.argv[1:])])
    budget = args.budget_s or (3000 if args.smoke else 540)
    deadline = time.perf_counter() + budget
    with tempfile.TemporaryDirectory(prefix="gpu-report-") as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        env = environment()
        env["git_commit"] = env["git_commit"] or args.commit
        print(f"{env['device']} (driver {env.get('driver')}), torch {env['torch']} "
              f"(CUDA {env['cuda']}), {env['cpu_cores']} CPU cores", flush=True)
        steps = {s.name: s for s in plan_steps(args, work.resolve())}
        with open(args.out_dir / "report.log", "w") as log:
            log.write(json.dumps(env, indent=1) + "\n")
            for step in steps.values():
                left = deadline - time.perf_counter()
                if left < 15:
                    step.status = "skipped: the report's time budget is spent"
                    continue
                step.limit_s = min(step.limit_s, left)
                run_step(step, step.limit_s, work.resolve(), log)
                if step.name == "end-to-end":
                    step.result = end_to_end_result(work)
        report = {"environment": env, "command": command, "smoke": args.smoke,
                  "steps": {name: {"title": s.title, "status": s.status,
                                   "seconds": s.seconds, "limit_s": s.limit_s,
                                   "command": shlex.join(s.argv), "result": s.result}
                            for name, s in steps.items()},
                  "goals": [dict(zip(("goal", "measured", "verdict"), row))
                            for row in goal_rows(steps)]}
        (args.out_dir / "report.json").write_text(json.dumps(report, indent=1))
        text = markdown(env, steps, command, args.smoke)
        (args.out_dir / "report.md").write_text(text + "\n")
    print("\n" + text)
    return 0 if all(s.status == "ok" for s in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
