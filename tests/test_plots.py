"""`mtrl-bench plot` on fabricated run directories: every figure kind written, absent
record kinds skipped with a message, bad input gives one-line errors."""

from __future__ import annotations

import json

import numpy as np

from mtrl_bench.cli import main
from mtrl_bench.suites import FIXED_SUITES

TASKS = FIXED_SUITES["mt5"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_metrics(root, method, seed, records, *, quality="near-optimal", status="finished"):
    path = root / "mt5" / quality / method / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps(
        {"method": method, "suite": "mt5", "tasks": TASKS, "quality": quality, "seed": seed,
         "status": status}))
    lines = [json.dumps(r) for r in records]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"kind": "ev')  # cut off


def eval_records(level, seed):
    rng = np.random.default_rng(seed)
    return [{"kind": "eval", "step": step, "num_goals": 50,
             "success": {t: level for t in TASKS}, "return": {t: 1000 * level for t in TASKS},
             "mean_success": min(1.0, level * step / 400 + rng.uniform(0, 0.05)),
             "mean_return": 1000 * level * step / 400}
            for step in (100, 200, 300, 400)]


def mask_records(with_beta: bool, with_hist: bool):
    records = []
    for index, step in enumerate(range(50, 450, 50)):
        record = {"kind": "mask", "step": step,
                  "sparsity": [0.2 + 0.01 * index * (t + 1) for t in range(len(TASKS))],
                  "mean_soft_value": [0.9] * len(TASKS)}
        if with_beta:
            record["beta"] = 5 + 7.5 * (1 + np.cos(2 * np.pi * step / 400))
        if with_hist:
            counts = np.random.default_rng(step).poisson(50, (len(TASKS), 20)).tolist()
            record["conflict_hist"] = {"edges": np.linspace(-1, 1, 21).tolist(),
                                       "counts": counts}
        records.append(record)
    return records


def test_plot_writes_every_figure_as_png(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "figures"
    for seed in range(3):
        write_metrics(runs, "promptdt", seed, eval_records(0.5, seed))
        write_metrics(runs, "harmodt-f", seed, eval_records(0.6, seed) + mask_records(False, False))
    write_metrics(runs, "socodt", 0, eval_records(0.8, 0) + mask_records(True, True))
    write_metrics(runs, "socodt", 1, eval_records(0.8, 1)[:2] + mask_records(True, True)[:3],
                  status="running")
    # A quality with evaluations only: its mask figures are skipped, not drawn empty.
    write_metrics(runs, "promptdt", 0, eval_records(0.3, 0), quality="sub-optimal")

    assert main(["plot", "--results-dir", str(tmp_path)]) == 0  # reads runs/, writes figures/
    stdout = capsys.readouterr().out
    expected = [f"{kind}_mt5_near-optimal.png" for kind in
                ("learning_curves", "mask_sparsity", "beta_schedule", "conflict_scores")]
    expected.append("learning_curves_mt5_sub-optimal.png")
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for name in expected:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    for kind in ("mask_sparsity", "beta_schedule", "conflict_scores"):
        assert f"skipped {kind} for MT5 sub-optimal" in stdout


def test_plot_errors_are_one_line_with_exit_2(tmp_path, capsys):
    empty = tmp_path / "runs"
    (empty / "mt5" / "near-optimal" / "socodt" / "seed0").mkdir(parents=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    runs = tmp_path / "real"
    write_metrics(runs, "socodt", 0, eval_records(0.8, 0))
    cases = [
        (["--runs", str(tmp_path / "nowhere")], "does not exist"),
        (["--runs", str(empty)], "no runs with metrics"),
        (["--runs", str(runs), "--out", str(blocker / "figures")], "cannot create figures dir"),
    ]
    for argv, message in cases:
        assert main(["plot", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err
