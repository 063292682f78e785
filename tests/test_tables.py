"""`mtrl-bench table` on fabricated run directories, checked against independent formulas."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mtrl_bench.cli import main
from mtrl_bench.suites import FIXED_SUITES

TASKS = FIXED_SUITES["mt5"]
QUALITIES = ("near-optimal", "sub-optimal")
RESAMPLES = "200"


def write_run(root, method, quality, seed, success, returns, *, best_offset=0.05,
              status="finished", final=True, suite="mt5", budget=16000, folder=None):
    """A run directory in the runner's contract format (meta.json, final.json)."""
    path = root / suite.replace(":", "_") / quality / method / (folder or f"seed{seed}")
    path.mkdir(parents=True)
    meta = {"method": method, "suite": suite, "tasks": TASKS, "quality": quality,
            "seed": seed, "preset": "quick", "status": status,
            "settings": {"protocol": {"Run.budget_sequences": str(budget)}, "method": {}}}
    (path / "meta.json").write_text(json.dumps(meta))

    def block(offset):
        return {"step": 100, "num_goals": 50,
                "success": {t: float(min(s + offset, 1.0)) for t, s in zip(TASKS, success)},
                "return": {t: float(r) for t, r in zip(TASKS, returns)},
                "mean_success": float(np.mean(success)), "mean_return": float(np.mean(returns))}

    if final:
        (path / "final.json").write_text(json.dumps(
            {"tasks": TASKS, "final": block(0.0), "best": block(best_offset)}))
    return path


# method -> (level of success, seeds present per quality). mtdt has no sub-optimal runs;
# socodt-nomag has none at all (Table 4 must show it as missing); harmodt-m has one seed.
PLAN = {
    "promptdt": (0.45, {"near-optimal": 3, "sub-optimal": 3}),
    "mtdt": (0.40, {"near-optimal": 2}),
    "harmodt-m": (0.52, {"near-optimal": 1, "sub-optimal": 1}),
    "harmodt-f": (0.55, {"near-optimal": 3, "sub-optimal": 3}),
    "socodt-hard": (0.60, {"near-optimal": 2, "sub-optimal": 2}),
    "socodt-fixed": (0.62, {"near-optimal": 2, "sub-optimal": 2}),
    "socodt": (0.80, {"near-optimal": 3, "sub-optimal": 3}),
}


@pytest.fixture
def fabricated(tmp_path):
    """Run directories plus the arrays they hold: {(quality, method): (success, returns)}."""
    rng = np.random.default_rng(7)
    runs = tmp_path / "runs"
    truth = {}
    task_offsets = np.linspace(-0.15, 0.15, len(TASKS))
    for method, (level, seeds) in PLAN.items():
        for quality, count in seeds.items():
            shift = 0.0 if quality == "near-optimal" else -0.2
            success = np.clip(level + shift + task_offsets
                              + rng.normal(0, 0.03, (count, len(TASKS))), 0, 1)
            success = np.round(success * 50) / 50  # rates over 50 goals
            returns = 4000 * success + rng.normal(0, 50, success.shape)
            for seed in range(count):
                write_run(runs, method, quality, seed, success[seed], returns[seed])
            truth[(quality, method)] = (success, returns)
    write_run(runs, "socodt", "near-optimal", 3, [0.0] * 5, [0.0] * 5, status="running",
              final=False)
    write_run(runs, "promptdt", "near-optimal", 7, [0.0] * 5, [0.0] * 5, final=False)
    return runs, truth


def run_table(capsys, *argv):
    code = main(["table", *argv, "--resamples", RESAMPLES])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table1_markdown_rows(markdown: str) -> dict[str, list[str]]:
    """Method -> its cells in the first Markdown table (Table 1)."""
    block = markdown.split("### Table 1: ")[1].split("\n\n")[1]
    rows = {}
    for line in block.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_table1_numbers_match_independent_computation(fabricated, tmp_path, capsys):
    runs, truth = fabricated
    out = tmp_path / "tables"
    code, stdout, _ = run_table(capsys, "--runs", str(runs), "--out", str(out))
    assert code == 0
    for name in ("table1", "table1_best", "table4", "per_task", "iqm"):
        for suffix in ("md", "csv", "tex"):
            assert (out / f"{name}.{suffix}").stat().st_size > 0
    assert "### Table 1: success rate (%), final checkpoint" in stdout

    frame = pd.read_csv(out / "table1.csv")
    frame = frame.set_index(["quality", "method"])
    baselines = ("promptdt", "mtdt", "harmodt-m", "harmodt-f")
    comparisons = []
    for quality in QUALITIES:
        per_run = {m: truth[(quality, m)][0].mean(axis=1)
                   for m in PLAN if (quality, m) in truth and m in baselines + ("socodt",)}
        best_baseline = max((m for m in per_run if m in baselines),
                            key=lambda m: per_run[m].mean())
        assert best_baseline == "harmodt-f"
        for method, values in per_run.items():
            row = frame.loc[(quality, method)]
            assert row["status"] == "finished" and row["n"] == len(values)
            assert row["mean_success_pct"] == pytest.approx(100 * values.mean(), abs=1e-4)
            if len(values) > 1:
                assert row["std_success_pct"] == pytest.approx(100 * np.std(values, ddof=1),
                                                               abs=1e-4)
            else:
                assert np.isnan(row["std_success_pct"])
            if method == best_baseline:
                continue
            assert row["best_baseline"] == best_baseline
            if len(values) > 1:
                expected = sps.ttest_ind(values, per_run[best_baseline], equal_var=False).pvalue
                assert row["p_welch"] == pytest.approx(expected, rel=1e-4)
                comparisons.append((row["p_welch"], row["p_welch_bh"]))
            else:
                assert np.isnan(row["p_welch"]) and np.isnan(row["ci_low_pct"])
            diff = 100 * (truth[(quality, method)][0].mean()
                          - truth[(quality, best_baseline)][0].mean())
            assert row["diff_pct"] == pytest.approx(diff, abs=1e-4)
        socodt = frame.loc[(quality, "socodt")]
        assert socodt["ci_low_pct"] < socodt["diff_pct"] < socodt["ci_high_pct"]
        assert socodt["ci_low_pct"] > 0 and socodt["significant"] == "up"
    raw = [p for p, _ in comparisons]
    adjusted = sps.false_discovery_control(raw, method="bh")
    assert [bh for _, bh in comparisons] == pytest.approx(list(adjusted), rel=1e-4)
    # Ablation variants are Table 4's business.
    assert "socodt-hard" not in frame.index.get_level_values("method")


def test_table1_markdown_bold_missing_and_seed_counts(fabricated, tmp_path, capsys):
    runs, truth = fabricated
    out = tmp_path / "tables"
    run_table(capsys, "--runs", str(runs), "--out", str(out))
    markdown = (out / "table1.md").read_text()
    rows = table1_markdown_rows(markdown)
    near, sub = 0, 1
    socodt = truth[("near-optimal", "socodt")][0].mean(axis=1)
    expected = f"**{100 * socodt.mean():.2f} ± {100 * np.std(socodt, ddof=1):.2f}** ↑ (n=3)"
    assert rows["socodt"][near] == expected
    assert rows["mtdt"][sub] == "—"  # missing, not 0
    assert "(n=2)" in rows["mtdt"][near]
    one_seed = truth[("near-optimal", "harmodt-m")][0].mean()
    assert rows["harmodt-m"][near] == f"{100 * one_seed:.2f} (n=1)"  # no ± with one seed
    assert sum("**" in cell for row in rows.values() for cell in row) == 2
    assert "promptdt mt5 near-optimal seed7: incomplete (final.json missing)" in markdown
    assert "socodt mt5 near-optimal seed3: running\n" in markdown
    comparisons = markdown.split("### Table 1 comparisons")[1]
    assert "n/a (needs ≥2 seeds each)" in comparisons  # harmodt-m, one seed

    csv = pd.read_csv(out / "table1.csv").set_index(["quality", "method"])
    assert csv.loc[("sub-optimal", "mtdt"), "status"] == "missing"
    assert np.isnan(csv.loc[("sub-optimal", "mtdt"), "mean_success_pct"])

    latex = (out / "table1.tex").read_text()
    assert "\\textbf{" in latex and "$^{\\uparrow}$" in latex
    assert "\\multicolumn{2}{c}{MT5}" in latex
    body = latex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    assert {line.count(" & ") for line in body} == {2}


def test_best_over_evaluations_is_separate_and_labelled(fabricated, tmp_path, capsys):
    runs, truth = fabricated
    out = tmp_path / "tables"
    run_table(capsys, "--runs", str(runs), "--out", str(out))
    best = pd.read_csv(out / "table1_best.csv").set_index(["quality", "method"])
    values = np.minimum(truth[("sub-optimal", "promptdt")][0] + 0.05, 1.0).mean(axis=1)
    assert best.loc[("sub-optimal", "promptdt"), "mean_success_pct"] == pytest.approx(
        100 * values.mean(), abs=1e-4)
    assert "best over evaluations" in (out / "table1_best.md").read_text()

    code, stdout, _ = run_table(capsys, "--runs", str(runs), "--out", str(out),
                                "--metric", "best")
    assert code == 0 and (out / "per_task_best.csv").exists()
    assert "Table 4: component ablations, best over evaluations" in stdout


def test_table4_per_task_and_iqm(fabricated, tmp_path, capsys):
    runs, truth = fabricated
    out = tmp_path / "tables"
    run_table(capsys, "--runs", str(runs), "--out", str(out))

    table4 = pd.read_csv(out / "table4.csv").set_index(["quality", "method"])
    success, returns = truth[("sub-optimal", "socodt-fixed")]
    row = table4.loc[("sub-optimal", "socodt-fixed")]
    assert row["components"] == "S+M"
    assert row["mean_success_pct"] == pytest.approx(100 * success.mean(axis=1).mean(), abs=1e-4)
    assert row["mean_return"] == pytest.approx(returns.mean(axis=1).mean(), rel=1e-6)
    assert row["std_return"] == pytest.approx(np.std(returns.mean(axis=1), ddof=1), rel=1e-6)
    assert table4.loc[("near-optimal", "socodt-nomag"), "status"] == "missing"
    markdown = (out / "table4.md").read_text()
    assert re.search(r"\| near-optimal +\| S\+A \(socodt-nomag\) +\| — +\| — +\|", markdown)

    per_task = pd.read_csv(out / "per_task.csv").set_index(["quality", "task", "method"])
    success = truth[("near-optimal", "promptdt")][0]
    for index, task in enumerate(TASKS):
        assert per_task.loc[("near-optimal", task, "promptdt"), "mean_success_pct"] == \
            pytest.approx(100 * success[:, index].mean(), abs=1e-4)
    assert "No finished runs here for: mtdt" in (out / "per_task.md").read_text()

    iqm = pd.read_csv(out / "iqm.csv").set_index(["quality", "method"])
    success = truth[("near-optimal", "socodt")][0]
    row = iqm.loc[("near-optimal", "socodt")]
    assert row["iqm_pct"] == pytest.approx(100 * sps.trim_mean(success.ravel(), 0.25), abs=1e-4)
    assert row["ci_low_pct"] <= row["iqm_pct"] <= row["ci_high_pct"]
    assert np.isnan(iqm.loc[("near-optimal", "harmodt-m"), "ci_low_pct"])  # one seed


def test_tables_are_deterministic_and_baselines_configurable(fabricated, tmp_path, capsys):
    runs, _ = fabricated
    first, second = tmp_path / "a", tmp_path / "b"
    run_table(capsys, "--runs", str(runs), "--out", str(first))
    run_table(capsys, "--runs", str(runs), "--out", str(second))
    assert (first / "table1.csv").read_text() == (second / "table1.csv").read_text()
    # --results-dir R reads R/runs and writes R/tables
    assert run_table(capsys, "--results-dir", str(runs.parent))[0] == 0
    assert (first / "table1.csv").read_text() == (runs.parent / "tables/table1.csv").read_text()

    custom = tmp_path / "c"
    code, _, _ = run_table(capsys, "--runs", str(runs), "--out", str(custom),
                           "--baselines", "promptdt", "mtdt")
    assert code == 0
    frame = pd.read_csv(custom / "table1.csv")
    compared = frame[frame["method"] == "harmodt-f"]
    assert set(compared["best_baseline"]) == {"promptdt"}
    assert compared["p_welch"].notna().all()


def test_errors_are_one_line_with_exit_2(fabricated, tmp_path, capsys):
    runs, _ = fabricated
    empty = tmp_path / "empty"
    empty.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cases = [
        (["--runs", str(tmp_path / "nowhere")], "does not exist"),
        (["--runs", str(empty)], f"no finished runs under {empty}"),
        (["--runs", str(runs), "--out", str(blocker / "tables")], "cannot create results dir"),
        (["--runs", str(runs), "--baselines", "nosuch"], "unknown baseline(s) nosuch"),
    ]
    for argv, message in cases:
        code, _, err = run_table(capsys, *argv)
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and message in err


def test_runs_of_another_protocol_or_backup_folders_are_not_averaged_in(fabricated, tmp_path,
                                                                        capsys):
    """A cell averages only runs of one protocol: a run made with another budget, and a
    copied seed folder, would otherwise enter the mean and the seed count silently."""
    runs, truth = fabricated
    write_run(runs, "harmodt-f", "near-optimal", 5, [1.0] * 5, [9e3] * 5, budget=8000000)
    write_run(runs, "harmodt-f", "near-optimal", 0, [1.0] * 5, [9e3] * 5, folder="seed0.bak")
    out = tmp_path / "tables"
    code, stdout, _ = run_table(capsys, "--runs", str(runs), "--out", str(out))
    assert code == 0
    row = pd.read_csv(out / "table1.csv").set_index(["quality", "method"]).loc[
        ("near-optimal", "harmodt-f")]
    assert row["n"] == 3 and row["seeds"] == "0 1 2"
    assert row["mean_success_pct"] == pytest.approx(
        100 * truth[("near-optimal", "harmodt-f")][0].mean(), abs=1e-4)
    assert ("harmodt-f mt5 near-optimal seed5: not used (made with another protocol than the "
            "other runs of its suite and dataset (Run.budget_sequences: 16000 -> 8000000))"
            in stdout)
    assert "seed0.bak" not in stdout
