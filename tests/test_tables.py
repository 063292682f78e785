"""`mtrl-bench table` on synthetic run directories, every number checked independently."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from synthetic_runs import ENTRIES, TASKS, build, main_runs, movement, scores

from mtrl_bench.analysis import stats
from mtrl_bench.analysis.render import MINUS
from mtrl_bench.cli import main

RESAMPLES = "200"
NEAR, SUB = "MT5 near-optimal [1]", "MT5 sub-optimal"  # [2]: the other budget


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The synthetic runs and the tables `mtrl-bench table` made of them."""
    root = tmp_path_factory.mktemp("tables")
    runs = build(root / "runs")
    out = root / "tables"
    code = main(["table", "--results-dir", str(root), "--resamples", RESAMPLES])
    assert code == 0
    return runs, out


def csv(out, name):
    return pd.read_csv(out / f"{name}.csv")


def welch(x, y):
    """Welch's t-interval and p by the textbook formulas (not scipy's ttest_ind)."""
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (x.size - 1) + vy ** 2 / (y.size - 1))
    diff = x.mean() - y.mean()
    half = sps.t.ppf(0.975, df) * se
    return diff, diff - half, diff + half, 2 * sps.t.sf(abs(diff) / se, df)


def fmt(value, digits=2):
    text = f"{round(value, digits):.{digits}f}"
    return "0.00" if float(text) == 0 else text.replace("-", MINUS)


def test_table1_every_number(tables):
    runs, out = tables
    frame = csv(out, "table1")
    main_frame = frame[frame["column"].isin([NEAR, SUB])]
    # rows: methods with their main parameters; ablations are not here
    assert set(main_frame["row"]) == {"promptdt", "mtdt", "harmodt-f", "harmodt-m", "socodt",
                                      "socodt [alpha=25.0]", "socodt [beta_min=10.0]"}
    pvalues = []
    for column, quality in ((NEAR, "near-optimal"), (SUB, "sub-optimal")):
        per_run = {m: scores(main_runs(runs, m, quality))[0].mean(axis=1)
                   for m in ("promptdt", "mtdt", "harmodt-f", "harmodt-m", "socodt")
                   if main_runs(runs, m, quality)}
        # the reference: best baseline with >= 2 seeds (mtdt has one seed and a higher mean)
        reference = max((m for m in per_run if m != "socodt" and per_run[m].size >= 2),
                        key=lambda m: (per_run[m].mean(), m == "harmodt-f"))
        assert reference == "harmodt-f"
        for method, values in per_run.items():
            row = main_frame[(main_frame["column"] == column) & (main_frame["row"] == method)]
            assert len(row) == 1
            row = row.iloc[0]
            assert row["n"] == values.size and row["reference"] == reference
            assert row["mean_success_pct"] == pytest.approx(100 * values.mean(), abs=1e-8)
            if values.size > 1:
                std = values.std(ddof=1)
                half = sps.t.ppf(0.975, values.size - 1) * std / math.sqrt(values.size)
                assert row["std_success_pct"] == pytest.approx(100 * std, abs=1e-8)
                assert row["ci_low_success_pct"] == pytest.approx(100 * (values.mean() - half))
            else:
                assert np.isnan(row["std_success_pct"]) and np.isnan(row["ci_low_success_pct"])
            if method == reference:
                assert np.isnan(row["diff_pct"])
                continue
            base = per_run[reference]
            if values.size < 2 or np.ptp(np.r_[values, base]) == 0 or (
                    np.ptp(values) == 0 and np.ptp(base) == 0):
                assert np.isnan(row["p_welch"]) and np.isnan(row["diff_ci_low_pct"])
                assert row["diff_pct"] == pytest.approx(100 * (values.mean() - base.mean()))
                continue
            diff, low, high, p = welch(values, base)
            assert row["diff_pct"] == pytest.approx(100 * diff, abs=1e-8)
            assert row["diff_ci_low_pct"] == pytest.approx(100 * low, rel=1e-6)
            assert row["diff_ci_high_pct"] == pytest.approx(100 * high, rel=1e-6)
            assert row["p_welch"] == pytest.approx(p, rel=1e-6)
            assert row["p_mann_whitney"] == pytest.approx(
                sps.mannwhitneyu(values, base).pvalue, rel=1e-6)
            pvalues.append((column, method, p))
    # the other rows of the near-optimal column are compared too (BH counts them)
    for label in ("socodt [alpha=25.0]",):
        row = main_frame[(main_frame["column"] == NEAR) & (main_frame["row"] == label)].iloc[0]
        values = np.array([r.success.mean() for r in runs if r.identity["method"].get("alpha")
                           == 25.0])
        base = scores(main_runs(runs, "harmodt-f", "near-optimal"))[0].mean(axis=1)
        pvalues.append((NEAR, label, welch(values, base)[3]))
    # BH over every defined p-value of the table (other columns' included)
    defined = frame.dropna(subset=["p_welch"])
    assert len(defined) == len(pvalues)
    adjusted = sps.false_discovery_control([p for _, _, p in pvalues], method="bh")
    for (column, label, _), p_adj in zip(pvalues, adjusted):
        row = frame[(frame["column"] == column) & (frame["row"] == label)].iloc[0]
        assert row["p_welch_bh"] == pytest.approx(p_adj, rel=1e-6)
    verdicts = frame.set_index(["column", "row"])["verdict"]
    assert verdicts[(NEAR, "socodt")] == "↑ higher"  # clear winner, 5 vs 5 seeds
    assert verdicts[(SUB, "socodt")].startswith("under-powered")  # 3 seeds
    assert verdicts[(NEAR, "harmodt-m")] == "not significant"  # an exact tie
    assert frame.set_index(["column", "row"]).loc[(NEAR, "harmodt-m"), "diff_pct"] == 0
    assert verdicts[(NEAR, "mtdt")].startswith("n/a")  # one seed


def test_table1_markdown_and_left_out_runs(tables):
    runs, out = tables
    markdown = (out / "table1.md").read_text()
    header = markdown.split("\n\n")[1].splitlines()[0]
    assert f"{NEAR} Δ vs harmodt-f (pp)" in header  # the reference is named
    names = [c.strip() for c in header.strip("|").split("|")]
    lines = {}
    for line in markdown.split("\n\n")[1].splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        lines[cells[0]] = dict(zip(names, cells))
    s_near, d_near = f"{NEAR} success (%)", f"{NEAR} Δ vs harmodt-f (pp)"
    s_sub, d_sub = f"{SUB} success (%)", f"{SUB} Δ vs harmodt-f (pp)"
    socodt = scores(main_runs(runs, "socodt", "near-optimal"))[0].mean(axis=1)
    harmodt = scores(main_runs(runs, "harmodt-f", "near-optimal"))[0].mean(axis=1)
    assert lines["socodt"][s_near] == (f"**{fmt(100 * socodt.mean())} ± "
                                  f"{fmt(100 * socodt.std(ddof=1))}** (n=5)")
    diff, low, high, _ = welch(socodt, harmodt)
    assert lines["socodt"][d_near] == (f"+{fmt(100 * diff)} [{fmt(100 * low)}, "
                                       f"{fmt(100 * high)}] ↑")
    tie = scores(main_runs(runs, "harmodt-m", "near-optimal"))[0].mean(axis=1)
    _, low, high, _ = welch(tie, harmodt)
    assert lines["harmodt-m"][d_near] == f"0.00 [{fmt(100 * low)}, {fmt(100 * high)}]"  # no −0.00
    assert lines["harmodt-f"][d_near] == "reference"
    assert lines["mtdt"][s_sub] == "—" and lines["mtdt"][d_sub] == "—"  # missing, not 0
    one = scores(main_runs(runs, "mtdt", "near-optimal"))[0].mean()
    assert lines["mtdt"][s_near] == f"{fmt(100 * one)} (n=1)"
    sub = scores(main_runs(runs, "socodt", "sub-optimal"))[0].mean(axis=1)
    sub_base = scores(main_runs(runs, "harmodt-f", "sub-optimal"))[0].mean(axis=1)
    diff, low, high, _ = welch(sub, sub_base)
    assert lines["socodt"][d_sub] == (f"{'+' if diff > 0 else ''}{fmt(100 * diff)} "
                                  f"[{fmt(100 * low)}, {fmt(100 * high)}] under-powered")
    assert "↑" not in lines["socodt"][d_sub] and "↓" not in lines["socodt"][d_sub]
    assert "socodt-hard" not in lines  # ablations go to table4
    # the run with another budget has its own column, the unfinished run is listed
    assert "MT5 near-optimal [2]" in markdown and "run.budget_sequences: 16000 -> 8000000" \
        in markdown
    assert "socodt mt5 near-optimal seed7" in markdown
    assert ": stopped (meta.json says running" in markdown  # and no process holds its lock
    assert "socodt [alpha=25.0]: socodt with alpha: 20.0 -> 25.0." in markdown
    # BH note counts the p-values actually adjusted
    defined = csv(out, "table1")["p_welch"].notna().sum()
    assert f"adjustment over the {defined} p-values defined in this table" in markdown


def test_best_over_evaluations_table_is_separate(tables):
    runs, out = tables
    frame = csv(out, "table1_best").set_index(["column", "row"])
    values = np.minimum(scores(main_runs(runs, "promptdt", "sub-optimal"))[0] + 0.1, 1.0)
    assert frame.loc[(SUB, "promptdt"), "mean_success_pct"] == pytest.approx(
        100 * values.mean(axis=1).mean())
    assert "best over evaluations" in (out / "table1_best.md").read_text()


def test_table4_per_task_iqm_and_long_csv(tables):
    runs, out = tables
    table4 = csv(out, "table4").set_index(["column", "row"])
    success, returns = scores(main_runs(runs, "socodt-fixed", "near-optimal"))
    row = table4.loc[(NEAR, "socodt-fixed")]
    assert row["components"] == "S+M" and row["ablation_of"] == "socodt"
    assert row["mean_success_pct"] == pytest.approx(100 * success.mean(axis=1).mean())
    assert row["mean_return"] == pytest.approx(returns.mean(axis=1).mean())
    assert row["std_return"] == pytest.approx(np.std(returns.mean(axis=1), ddof=1))
    # rows come from run records alone: an ablation registered here but never run has none
    assert (NEAR, "socodt-nomag") not in table4.index
    assert (NEAR, "promptdt") not in table4.index  # baselines are not ablations

    per_task = csv(out, "per_task").set_index(["column", "task", "row"])
    success, returns = scores(main_runs(runs, "promptdt", "near-optimal"))
    for index, task in enumerate(TASKS):
        entry = per_task.loc[(NEAR, task, "promptdt")]
        assert entry["mean_success_pct"] == pytest.approx(100 * success[:, index].mean())
        assert entry["std_success_pct"] == pytest.approx(100 * success[:, index].std(ddof=1))
        assert entry["mean_return"] == pytest.approx(returns[:, index].mean())

    iqm = csv(out, "iqm").set_index(["column", "row"])
    success = scores(main_runs(runs, "socodt", "near-optimal"))[0]
    entry = iqm.loc[(NEAR, "socodt")]
    assert entry["iqm_pct"] == pytest.approx(100 * sps.trim_mean(success.ravel(), 0.25))
    draws = np.random.default_rng(0).integers(0, 5, size=(200, 5))  # the documented resampling
    boot = [sps.trim_mean(success[d].ravel(), 0.25) for d in draws]
    assert entry["ci_low_pct"] == pytest.approx(100 * np.percentile(boot, 2.5))
    assert entry["ci_high_pct"] == pytest.approx(100 * np.percentile(boot, 97.5))
    assert np.isnan(iqm.loc[(NEAR, "mtdt"), "ci_low_pct"])  # one seed

    long = csv(out, "runs_long")
    finished = [r for r in runs if r.status == "finished"]
    assert len(long) == len(finished) * len(TASKS)
    for run in finished:
        rows = long[(long["method"] == run.method) & (long["seed"] == run.seed)
                    & (long["cell"] == run.path.parent.name)].set_index("task")
        assert rows.loc[TASKS, "final_success"].tolist() == pytest.approx(run.success.tolist())
        assert rows.loc[TASKS, "final_return"].tolist() == pytest.approx(run.returns.tolist())


def _poi_by_loop(x, y):
    """P(X > Y) by the definition: per task, every pair of seeds, ties one half."""
    return np.mean([np.mean([(a > b) + 0.5 * (a == b) for a in x[:, t] for b in y[:, t]])
                    for t in range(x.shape[1])])


def test_aggregate_tables_every_number(tables):
    """aggregates (optimality gap, performance profile) and poi (P(X > Y) vs the reference
    and pairwise), recomputed from the runs with the documented draws: seeds of each side
    drawn with replacement as whole runs, default_rng(--seed), X's draws first."""
    runs, out = tables
    success = scores(main_runs(runs, "socodt", "near-optimal"))[0]
    entry = csv(out, "aggregates").set_index(["column", "row"]).loc[(NEAR, "socodt")]
    assert entry["optimality_gap_pct"] == pytest.approx(100 * (1 - success.mean()))
    draws = np.random.default_rng(0).integers(0, 5, size=(200, 5))
    boot = [1 - success[d].mean() for d in draws]
    assert entry["optimality_gap_ci_low_pct"] == pytest.approx(100 * np.percentile(boot, 2.5))
    assert entry["optimality_gap_ci_high_pct"] == pytest.approx(
        100 * np.percentile(boot, 97.5))
    assert entry["above_50_pct"] == pytest.approx(100 * (success > 0.5).mean())
    boot = [(success[d] > 0.75).mean() for d in draws]
    assert entry["above_75_pct_ci_low"] == pytest.approx(100 * np.percentile(boot, 2.5))

    poi = csv(out, "poi")
    versus = poi[(poi["comparison"] == "vs reference") & (poi["column"] == NEAR)]
    entry = versus.set_index("row").loc["socodt"]
    reference = scores(main_runs(runs, entry["other"], "near-optimal"))[0]
    assert entry["other"] == "harmodt-f"  # table1's reference (harmodt-m ties it)
    assert entry["p_improvement"] == pytest.approx(_poi_by_loop(success, reference))
    rng = np.random.default_rng(0)
    dx, dy = rng.integers(0, 5, (200, 5)), rng.integers(0, 5, (200, 5))
    boot = [_poi_by_loop(success[a], reference[b]) for a, b in zip(dx, dy)]
    assert entry["p_improvement_ci_low"] == pytest.approx(np.percentile(boot, 2.5))
    assert entry["p_improvement_ci_high"] == pytest.approx(np.percentile(boot, 97.5))
    assert entry["interval_excludes_half"]  # socodt is far above harmodt-f here
    assert np.isnan(versus.set_index("row").loc["mtdt", "p_improvement_ci_low"])  # one seed
    pairs = poi[(poi["comparison"] == "pairwise") & (poi["column"] == NEAR)]
    assert set(pairs["row"]) == {"promptdt", "mtdt", "harmodt-f", "harmodt-m", "socodt"}
    one = pairs.set_index(["row", "other"]).loc[("promptdt", "socodt")]
    assert one["p_improvement"] == pytest.approx(_poi_by_loop(
        scores(main_runs(runs, "promptdt", "near-optimal"))[0], success))
    text = (out / "poi.md").read_text()
    assert "P(row > harmodt-f)" in text and "### P(row > column), MT5 near-optimal [1]" in text


def test_pairwise_rows_are_chosen_with_an_option(tables, tmp_path):
    runs, out = tables
    target = tmp_path / "t"
    assert main(["table", "--runs", str(out.parent / "runs"), "--out", str(target),
                 "--resamples", RESAMPLES, "--pairwise", "socodt", "promptdt"]) == 0
    pairs = csv(target, "poi")
    pairs = pairs[pairs["comparison"] == "pairwise"]
    assert set(pairs["row"]) == {"socodt", "promptdt"} == set(pairs["other"])
    assert main(["table", "--runs", str(out.parent / "runs"), "--out", str(target),
                 "--pairwise", "nonesuch"]) == 2


def test_mask_dynamics_table(tables):
    runs, out = tables
    frame = csv(out, "mask_dynamics").set_index(["column", "row"])
    assert (NEAR, "promptdt") not in frame.index  # no masks, no row
    members = main_runs(runs, "socodt", "near-optimal")
    per_run = []
    for run in members:
        masks = [r for r in run.records if r["kind"] == "mask"]
        per_run.append((np.mean(masks[-1]["sparsity"]),
                        np.mean([np.mean(r["conflicted"]) for r in masks]),
                        np.mean([np.mean(r["recovered"]) for r in masks]),
                        np.mean([v for v in masks[-1]["mean_soft_value"] if v is not None])))
    sparsity, conflicted, recovered, soft = map(np.array, zip(*per_run))
    row = frame.loc[(NEAR, "socodt")]
    assert row["n"] == 5
    assert row["mean_final_sparsity"] == pytest.approx(sparsity.mean())
    assert row["std_final_sparsity"] == pytest.approx(sparsity.std(ddof=1))
    assert row["mean_conflicted_per_update"] == pytest.approx(conflicted.mean())
    assert row["mean_recovered_share"] == pytest.approx(recovered.mean() / ENTRIES)
    assert row["mean_final_mean_soft_value"] == pytest.approx(soft.mean())  # soft entries only
    moved = [np.mean(movement(run)["moved"]) for run in members]  # from final.json
    assert row["mean_moved"] == pytest.approx(np.mean(moved))
    assert row["std_moved"] == pytest.approx(np.std(moved, ddof=1))
    assert row["mean_overlap"] == pytest.approx(np.mean([movement(r)["overlap"]
                                                          for r in members]))


def test_latex_is_valid(tables, tmp_path):
    _, out = tables
    for tex in out.glob("*.tex"):
        text = tex.read_text()
        assert text.isascii(), tex  # unicode is mapped to LaTeX, '<' is \textless{}
        assert "Table 1: " not in text and "\\caption{Success rate" in (
            text if tex.name == "table1.tex" else "\\caption{Success rate")
        assert "\\toprule" in text and "\\bottomrule" in text
        for block in text.split("\\midrule")[1:]:
            body = block.split("\\bottomrule")[0].strip().splitlines()
            widths = {line.count(" & ") for line in body}
            assert len(widths) <= 1, tex  # every row as wide as the header (or no rows)
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (.ci/run installs it)")
    document = "\n".join(["\\documentclass{article}", "\\usepackage[T1]{fontenc}",
                          "\\usepackage{booktabs}",
                          "\\begin{document}"]
                         + [f"\\input{{{t}}}" for t in sorted(out.glob("*.tex"))]
                         + ["\\end{document}"])
    (tmp_path / "doc.tex").write_text(document)
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                             "doc.tex"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_reference_and_min_seeds_options(tables, tmp_path, capsys):
    runs, _ = tables
    root = next(iter(runs)).path.parents[5]
    out = tmp_path / "t"
    assert main(["table", "--runs", str(root / "runs"), "--out", str(out), "--resamples",
                 RESAMPLES, "--reference", "promptdt", "--min-seeds", "3"]) == 0
    frame = csv(out, "table1").set_index(["column", "row"])
    assert frame.loc[(NEAR, "harmodt-f"), "reference"] == "promptdt"
    assert frame.loc[(SUB, "socodt"), "verdict"] == "↑ higher"  # 3 seeds are now enough
    assert main(["table", "--runs", str(root / "runs"), "--out", str(out),
                 "--reference", "nosuch"]) == 2
    assert "unknown method or row 'nosuch'" in capsys.readouterr().err


def test_tables_are_deterministic(tables, tmp_path):
    runs, out = tables
    root = next(iter(runs)).path.parents[5]
    again = tmp_path / "again"
    assert main(["table", "--runs", str(root / "runs"), "--out", str(again), "--resamples",
                 RESAMPLES]) == 0
    for path in out.glob("*.*"):
        assert (again / path.name).read_text() == path.read_text(), path.name


def test_errors_are_one_line_with_exit_2(tables, tmp_path, capsys):
    runs, _ = tables
    root = next(iter(runs)).path.parents[5]
    empty = tmp_path / "empty"
    empty.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cases = [
        (["--runs", str(tmp_path / "nowhere")], "does not exist"),
        (["--runs", str(empty)], f"no finished runs under {empty}"),
        (["--runs", str(root / "runs"), "--out", str(blocker / "t")], "cannot create results"),
        (["--runs", str(root / "runs"), "--baselines", "nosuch"], "unknown method or row"),
        (["--runs", str(root / "runs"), "--min-seeds", "1"], "--min-seeds must be at least 2"),
    ]
    for argv, message in cases:
        assert main(["table", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err


def test_runs_without_identity_are_listed_not_used(tmp_path, capsys):
    path = tmp_path / "runs" / "mt5" / "near-optimal" / "promptdt" / "old" / "seed0"
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"method": "promptdt", "status": "finished"}))
    (path / "final.json").write_text("{}")
    assert main(["table", "--results-dir", str(tmp_path)]) == 2  # nothing usable
    assert "no usable finished runs" in capsys.readouterr().err


def test_the_default_variant_keeps_the_plain_name_and_only_it_can_be_the_reference(tmp_path,
                                                                                   capsys):
    """A grid variant with more seeds is still labelled by what differs; a baseline's variant
    with a higher mean is never picked as the reference after the fact."""
    from synthetic_runs import FakeRun, identity, write

    from mtrl_bench.identity import cell_id
    from mtrl_bench.runs.rundir import run_dir

    plan = [("socodt", {}, 2, 0.6), ("socodt", {"beta_min": 1.0}, 5, 0.5),
            ("harmodt-f", {}, 3, 0.4), ("harmodt-f", {"k_max": 50}, 3, 0.9)]
    for method, params, seeds, level in plan:
        ident = identity(method, "near-optimal", **params)
        for seed in range(seeds):
            success = np.full(5, level) + np.array([0.0, 0.01, 0.03, 0.02, 0.05]) * (seed + 1)
            path = run_dir(tmp_path, "mt5", "near-optimal", method, cell_id(ident), seed)
            write(tmp_path / "runs", FakeRun(method, "near-optimal", seed, success,
                                             1000 * success, ident, path))
    assert main(["table", "--results-dir", str(tmp_path), "--resamples", "100"]) == 0
    capsys.readouterr()
    frame = csv(tmp_path / "tables", "table1")
    assert set(frame["row"]) == {"socodt", "socodt [beta_min=1.0]", "harmodt-f",
                                 "harmodt-f [k_max=50]"}
    assert set(frame["reference"].dropna()) == {"harmodt-f"}
    assert frame.set_index("row").loc["socodt", "n"] == 2


def test_table1_says_which_numerics_made_the_runs_and_which_cells_mix_them(tmp_path, capsys):
    """meta.json "numerics": a cell whose seeds were made under different machine numerics
    (or partly before they were recorded) is named, with its key counts."""
    from synthetic_runs import FakeRun, identity, write

    from mtrl_bench.identity import cell_id
    from mtrl_bench.runs.rundir import run_dir

    here = {"key": "aaaaaaaaaa", "cpu_model": "CPU A", "cpu_capability": "AVX2",
            "torch_threads": 2, "torch": "2.13.0"}
    there = {**here, "key": "bbbbbbbbbb", "cpu_model": "CPU B", "cpu_capability": "AVX512"}
    plan = {"promptdt": [here, here, here], "harmodt-f": [here, there, None]}
    for method, made_under in plan.items():
        ident = identity(method, "near-optimal")
        for seed, numerics in enumerate(made_under):
            path = run_dir(tmp_path, "mt5", "near-optimal", method, cell_id(ident), seed)
            success = np.full(5, 0.5) + 0.01 * seed
            write(tmp_path / "runs", FakeRun(method, "near-optimal", seed, success,
                                             1000 * success, ident, path))
            if numerics:
                meta = json.loads((path / "meta.json").read_text())
                (path / "meta.json").write_text(json.dumps({**meta, "numerics": numerics}))
    assert main(["table", "--results-dir", str(tmp_path), "--resamples", "100"]) == 0
    capsys.readouterr()
    markdown = (tmp_path / "tables" / "table1.md").read_text()
    assert ("Machine numerics (meta.json): aaaaaaaaaa: CPU A, AVX2, 2 threads, torch 2.13.0; "
            "bbbbbbbbbb: CPU B, AVX512, 2 threads, torch 2.13.0; unrecorded (older runs)."
            in markdown)
    assert ("Cells mixing runs made under different numerics: harmodt-f in MT5 near-optimal "
            "(aaaaaaaaaa x1, bbbbbbbbbb x1, unrecorded x1)." in markdown)
    assert "promptdt in MT5" not in markdown.split("Cells mixing")[1]


def test_comparisons_pair_by_seed_only_where_the_records_show_shared_streams(tmp_path,
                                                                             capsys):
    from synthetic_runs import FakeRun, identity, write

    from mtrl_bench.identity import cell_id
    from mtrl_bench.runs.rundir import run_dir

    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 0.1, 5)
    levels = {"harmodt-r": 0.6, "promptdt": 0.45, "mtdt": 0.5}
    success = {}
    for method, level in levels.items():
        ident = identity(method, "near-optimal")
        success[method] = []
        for seed in range(5):
            values = np.clip(level + seed_effect[seed] + rng.normal(0, 0.02, 5), 0, 1)
            success[method].append(values)
            path = run_dir(tmp_path, "mt5", "near-optimal", method, cell_id(ident), seed)
            write(tmp_path / "runs", FakeRun(method, "near-optimal", seed, values,
                                             1000 * values, ident, path))
            weights = f"w{seed}" if method != "mtdt" else f"mtdt-w{seed}"  # another model
            meta = json.loads((path / "meta.json").read_text())
            meta["streams"] = {"initial_weights": weights, "batch_stream": f"b{seed}",
                               "initial_masks": None}
            (path / "meta.json").write_text(json.dumps(meta))
    assert main(["table", "--results-dir", str(tmp_path), "--resamples", "100",
                 "--reference", "harmodt-r"]) == 0
    capsys.readouterr()
    frame = csv(tmp_path / "tables", "table1").set_index("row")
    expected = stats.paired_diff_ci(np.array(success["promptdt"]), np.array(success["harmodt-r"]))
    assert frame.loc["promptdt", "paired_diff_ci_low_pct"] == pytest.approx(100 * expected.low)
    assert frame.loc["promptdt", "paired_diff_ci_high_pct"] == pytest.approx(100 * expected.high)
    welch_width = frame.loc["promptdt", "diff_ci_high_pct"] - frame.loc["promptdt",
                                                                        "diff_ci_low_pct"]
    assert 100 * (expected.high - expected.low) < welch_width  # the seed effect cancels
    assert np.isnan(frame.loc["mtdt", "paired_diff_ci_low_pct"])  # other weights: not paired
    markdown = (tmp_path / "tables" / "table1.md").read_text()
    assert "95% CI paired by seed" in markdown
    mtdt_line = next(line for line in markdown.splitlines() if "| mtdt " in line and
                     "harmodt-r" in line)
    assert mtdt_line.rstrip(" |").endswith("—")


def test_planned_comparisons_one_bh_family_each(tables, tmp_path, capsys):
    """`mtrl-bench compare`: the named pairs, Welch checked by the textbook formulas, BH
    over the family's p-values only, rows named by label or method{param=value}, and the
    pairs that cannot be tested said so."""
    runs, out = tables
    plan = tmp_path / "plan.toml"
    plan.write_text('''
[[family]]
name = "F"
where = {"run.budget_sequences" = 16000}
pairs = [["socodt", "harmodt-f"], ["promptdt", "harmodt-f"],
         ["socodt{beta_min=10.0}", "promptdt"], ["nothing-dt", "promptdt"]]

[[family]]
name = "G"
columns = ["MT5 sub-optimal"]
pairs = [["socodt", "promptdt"]]
''')
    root = out.parent
    assert main(["compare", "--plan", str(plan), "--results-dir", str(root)]) == 0
    capsys.readouterr()
    frame = pd.read_csv(root / "planned" / "F.csv")
    tested = {(r.column, r.row_a, r.row_b): r for r in frame.itertuples()}
    p_values = []
    for (a, b, quality) in (("socodt", "harmodt-f", "near-optimal"),
                            ("socodt", "harmodt-f", "sub-optimal"),
                            ("promptdt", "harmodt-f", "near-optimal"),
                            ("promptdt", "harmodt-f", "sub-optimal")):
        column = NEAR if quality == "near-optimal" else SUB
        row = tested[(column, a, b)]
        x = scores(main_runs(runs, a, quality))[0].mean(axis=1)
        y = scores(main_runs(runs, b, quality))[0].mean(axis=1)
        diff, low, high, p = welch(x, y)
        assert row.diff_pct == pytest.approx(100 * diff)
        assert (row.diff_ci_low_pct, row.diff_ci_high_pct) == pytest.approx((100 * low, 100 * high))
        assert row.p_welch == pytest.approx(p)
        p_values.append(p)
    variant = tested[(NEAR, "socodt [beta_min=10.0]", "promptdt")]  # named by its parameter
    assert variant.n_a == 1 and variant.verdict == "under-powered"
    adjusted = sps.false_discovery_control(p_values)  # the 1-seed variant has no p-value
    assert [tested[k].p_welch_bh for k in tested if not math.isnan(tested[k].p_welch)] == \
        pytest.approx(list(adjusted))
    markdown = (root / "planned" / "F.md").read_text()
    assert "no row named 'nothing-dt' has runs" in markdown
    assert "[2]" not in " ".join(frame["column"])  # the other budget's column is left out
    other = pd.read_csv(root / "planned" / "G.csv")  # its own family: BH over one p-value
    assert list(other["column"]) == [SUB] and other["p_welch_bh"][0] == pytest.approx(
        other["p_welch"][0])
    bad = tmp_path / "bad.toml"
    bad.write_text('[[family]]\nname = "H"\npairs = [["socodt"]]\n')
    assert main(["compare", "--plan", str(bad), "--results-dir", str(root)]) == 2
    assert "needs pairs" in capsys.readouterr().err
    assert not (root / "planned" / "F_every_evaluation.csv").exists()  # not asked for


def test_planned_pairs_at_every_evaluation_on_the_fixed_goals(tmp_path, capsys):
    """every_evaluation: each pair at every evaluation on goals 0-4, the final evaluation's
    read from its episodes, Welch and (shared streams) paired intervals by the textbook."""
    from synthetic_runs import EVAL_GOALS, FakeRun, episodes, eval_record, identity, write

    from mtrl_bench.identity import cell_id
    from mtrl_bench.runs.rundir import run_dir

    rng = np.random.default_rng(11)
    seed_effect = rng.normal(0, 0.1, 5)
    levels = {"random-masks": 0.6, "promptdt": 0.4}
    periodic = {}  # (method, seed) -> {step: (tasks,) success on the fixed goals}
    finals = {}
    for method, level in levels.items():
        ident = identity(method, "near-optimal")
        for seed in range(5):
            curve = {step: np.clip(level * step / 400 + seed_effect[seed]
                                   + rng.normal(0, 0.05, 5), 0, 1) for step in (100, 200, 300)}
            final = np.round(np.clip(level + seed_effect[seed] + rng.normal(0, 0.05, 5), 0, 1)
                             * 50) / 50
            periodic[(method, seed)], finals[(method, seed)] = curve, final
            records = [eval_record(step, EVAL_GOALS, x, 100 * x) for step, x in curve.items()]
            records.append(eval_record(400, 50, final, 100 * final))
            path = run_dir(tmp_path, "mt5", "near-optimal", method, cell_id(ident), seed)
            write(tmp_path / "runs", FakeRun(method, "near-optimal", seed, final, 100 * final,
                                             ident, path, records=records))
            meta = json.loads((path / "meta.json").read_text())
            meta["streams"] = {"initial_weights": f"w{seed}", "batch_stream": f"b{seed}",
                               "initial_masks": None}
            (path / "meta.json").write_text(json.dumps(meta))
    plan = tmp_path / "plan.toml"
    plan.write_text('[[family]]\nname = "E"\nevery_evaluation = true\n'
                    'pairs = [["random-masks", "promptdt"]]\n')
    assert main(["compare", "--plan", str(plan), "--results-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    frame = pd.read_csv(tmp_path / "planned" / "E_every_evaluation.csv").set_index("step")
    assert list(frame.index) == [100, 200, 300, 400]
    assert list(frame["sequences"]) == [4000, 8000, 12000, 16000]  # 16k sequences, 400 steps

    def fixed_goals(method, seed, step):
        if step < 400:
            return periodic[(method, seed)][step].mean()
        run = FakeRun(method, "near-optimal", seed, finals[(method, seed)], None, {}, tmp_path)
        return np.mean([e["success"] for e in episodes(run) if e["goal"] < EVAL_GOALS])

    for step, row in frame.iterrows():
        x = np.array([fixed_goals("random-masks", s, step) for s in range(5)])
        y = np.array([fixed_goals("promptdt", s, step) for s in range(5)])
        diff, low, high, _ = welch(x, y)
        assert row.diff_pct == pytest.approx(100 * diff)
        assert (row.diff_ci_low_pct, row.diff_ci_high_pct) == pytest.approx((100 * low,
                                                                             100 * high))
        d = x - y
        half = sps.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
        assert (row.paired_diff_ci_low_pct, row.paired_diff_ci_high_pct) == pytest.approx(
            (100 * (d.mean() - half), 100 * (d.mean() + half)))
    assert frame.loc[400, "diff_pct"] != pytest.approx(100 * (np.mean(
        [finals[("random-masks", s)].mean() for s in range(5)]) - np.mean(
        [finals[("promptdt", s)].mean() for s in range(5)])))  # goals 0-4, not all 50
    markdown = (tmp_path / "planned" / "E_every_evaluation.md").read_text()
    assert "the first 5 goals of every task" in markdown and "16,000" in markdown
    plan.write_text('[[family]]\nname = "E"\nevery_evaluation = "yes"\n'
                    'pairs = [["random-masks", "promptdt"]]\n')
    assert main(["compare", "--plan", str(plan), "--results-dir", str(tmp_path)]) == 2
    assert "every_evaluation = true or false" in capsys.readouterr().err
