"""Where two runs' records part: E1's check that a longer run repeats a shorter one.

A run at 4x the budget must repeat the shorter run's first steps bit for bit when nothing
in its method depends on the budget (results/README, E1). This compares two run folders'
``metrics.jsonl`` over the steps both recorded: the training losses (means over each
logging window, so equal floats mean equal windows of per-step losses) and the periodic
evaluations. Where one run evaluated the first k goals at a step and the other evaluated
all goals there (its final evaluation), the k goals are compared from the other run's
``episodes.json``; the policy then ran in a different batch, so returns may differ in the
last bits and only the successes are expected to agree.

    python tools/compare_trajectories.py RUN_A RUN_B [--up-to STEP]

Exit status 0 when the runs agree on every common record, 1 at the first that differs.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _records(run: Path) -> list[dict]:
    with open(run / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def _by_step(records: list[dict], kind: str, up_to: int | None) -> dict[int, dict]:
    return {r["step"]: r for r in records
            if r["kind"] == kind and (up_to is None or r["step"] <= up_to)}


def _final_step(run: Path) -> int | None:
    final = run / "final.json"
    return json.loads(final.read_text())["final"]["step"] if final.exists() else None


def _first_goals(run: Path, num_goals: int) -> dict[str, dict[str, float]]:
    """Per-task success and return over goals 0..num_goals-1 of the final evaluation."""
    episodes = json.loads((run / "episodes.json").read_text())
    chosen = [e for e in episodes if e["goal"] < num_goals]
    tasks = sorted({e["task"] for e in chosen})
    return {key: {t: float(np.mean([e[field] for e in chosen if e["task"] == t]))
                  for t in tasks}
            for key, field in (("success", "success"), ("return", "episode_return"))}


def compare(run_a: Path, run_b: Path, up_to: int | None = None) -> list[str]:
    """Lines describing the comparison; the last starts with AGREE or DIFFER."""
    records_a, records_b = _records(run_a), _records(run_b)
    lines, parted = [], None
    train_a, train_b = (_by_step(r, "train", up_to) for r in (records_a, records_b))
    common = sorted(set(train_a) & set(train_b))
    same = [s for s in common if train_a[s]["loss"] == train_b[s]["loss"]]
    lines.append(f"training losses: {len(same)} of {len(common)} common logging steps equal"
                 + (f" (steps {common[0]}..{common[-1]})" if common else ""))
    if len(same) < len(common):
        parted = next(s for s in common if train_a[s]["loss"] != train_b[s]["loss"])
        lines.append(f"  first differing loss at step {parted}: "
                     f"{train_a[parted]['loss']!r} vs {train_b[parted]['loss']!r}")
    eval_a, eval_b = (_by_step(r, "eval", up_to) for r in (records_a, records_b))
    for step in sorted(set(eval_a) & set(eval_b)):
        a, b = eval_a[step], eval_b[step]
        goals = min(a["num_goals"], b["num_goals"])
        if a["num_goals"] == b["num_goals"]:
            success_same = a["success"] == b["success"]
            return_same = a["return"] == b["return"]
            how = f"{goals} goals in both"
        else:
            wider, narrow = (run_a, b) if a["num_goals"] > b["num_goals"] else (run_b, a)
            if _final_step(wider) != step:
                lines.append(f"evaluation at step {step}: {a['num_goals']} vs "
                             f"{b['num_goals']} goals, no episodes to compare")
                continue
            subset = _first_goals(wider, goals)
            success_same = subset["success"] == narrow["success"]
            return_same = subset["return"] == narrow["return"]
            how = f"goals 0-{goals - 1}, one run's from its final episodes.json"
        lines.append(f"evaluation at step {step} ({how}): successes "
                     f"{'equal' if success_same else 'DIFFER'}, returns "
                     f"{'equal bit for bit' if return_same else 'differ'}")
        exact = a["num_goals"] == b["num_goals"]  # the same batch: returns must agree too
        if not success_same or (exact and not return_same):
            parted = step if parted is None else min(parted, step)
    lines.append("AGREE on every common record" if parted is None
                 else f"DIFFER from step {parted}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path, help="a run folder (with metrics.jsonl)")
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--up-to", type=int, help="compare records up to this step only")
    args = parser.parse_args(argv)
    for run in (args.run_a, args.run_b):
        if not (run / "metrics.jsonl").exists():
            parser.error(f"{run} has no metrics.jsonl: give a run's seed folder")
    lines = compare(args.run_a, args.run_b, args.up_to)
    print("\n".join(lines))
    return 0 if lines[-1].startswith("AGREE") else 1


if __name__ == "__main__":
    sys.exit(main())
