"""The paper's published numbers (mtrl_bench/analysis/socodt-paper.csv), checked against the
paper's text, and the tables that use them (Tables 2 and 3, ours beside the paper's)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import FakeRun, identity, write

from mtrl_bench.analysis.paper import load_reference
from mtrl_bench.cli import main
from mtrl_bench.identity import cell_id
from mtrl_bench.runs.rundir import run_dir
from mtrl_bench.suites import FIXED_SUITES, resolve_suite

PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "socodt-paper.txt"
#: a printed value: "mean±pm" then its LaTeX source "mean\pm pm" (or "mean_{\pm pm}"),
#: possibly bold; the repetition tells where one number ends and the next begins
VALUE = re.compile(r"(\d+\.\d+)±(\d+\.\d+?)(?:\\textbf\{)?\1\}?(?:_\{)?\\pm \2")
ORDER_T1 = [(s, q) for s in ("mt5", "mt30", "mt50") for q in ("near-optimal", "sub-optimal")]


def test_the_reference_file_parses():
    values = load_reference()
    counts = {t: sum(v.table == t for v in values) for t in (1, 2, 3, 4)}
    assert counts == {1: 42, 2: 24, 3: 8, 4: 16}
    assert all(v.seeds == 3 for v in values)
    assert {v.method for v in values if v.method} <= {
        "promptdt", "mtdt", "harmodt-r", "harmodt-m", "harmodt-f", "socodt", "socodt-hard",
        "socodt-fixed", "socodt-nomag"}


def _block(text: str, start: str, end: str) -> list[str]:
    block = text.split(start, 1)[1].split(end, 1)[0]
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]


def test_every_number_matches_the_paper_text():
    if not PAPER_TEXT.exists():
        pytest.skip(f"the paper's text is not at {PAPER_TEXT}: numbers not checked against it")
    text = PAPER_TEXT.read_text().replace("\xa0", " ")  # the text has non-breaking spaces
    values = load_reference()
    checked = 0

    def check(table, row, pairs, cells, metric="success"):
        nonlocal checked
        expected = [v for v in values if v.table == table and v.row == row
                    and v.metric == metric]
        by_cell = {(v.suite, v.quality): v for v in expected}
        assert len(pairs) == len(cells) == len(expected), (table, row, pairs)
        for (mean, pm), cell in zip(pairs, cells):
            value = by_cell[cell]
            assert value.mean == float(mean), (table, row, cell)
            assert value.pm == (None if pm is None else float(pm)), (table, row, cell)
            checked += 1

    for line in _block(text, "Table 1:", "5 Experiments")[2:]:
        row = next(v.row for v in values if v.table == 1 and line.startswith(v.row + " "))
        check(1, row, VALUE.findall(line), ORDER_T1)
    for line in _block(text, "Table 2:", "Refer to caption")[1:]:
        pairs = VALUE.findall(line)
        row = next(v.row for v in values if v.table == 2 and line.startswith(v.row + " "))
        check(2, row, pairs, [("mt50", q) for q in ("near-optimal", "sub-optimal")][:len(pairs)])
    setting = method = None
    for line in _block(text, "Table 3:", "To further verify")[1:]:
        if match := re.match(r"(\d+) Tasks (.+)", line):
            setting, method = f"random-{match[1]}", match[2]
        elif not line.startswith(("Near-opt", "Sub-opt")):
            method = line
        else:
            quality = "near-optimal" if line.startswith("Near") else "sub-optimal"
            (mean, pm), = VALUE.findall(line)
            value = next(v for v in values if v.table == 3 and v.row == method
                         and v.suite == setting and v.quality == quality)
            assert (value.mean, value.pm) == (float(mean), float(pm)), line
            checked += 1
    quality = None
    for line in _block(text, "Table 4:", "Refer to caption")[1:]:
        parts = line.split()
        if parts[0] in ("near-optimal", "sub-optimal"):
            quality, parts = parts[0], parts[1:]
        row, success, ret = parts
        for metric, mean in (("success", success), ("return", ret)):
            value = next(v for v in values if v.table == 4 and v.row == row
                         and v.quality == quality and v.metric == metric)
            assert value.mean == float(mean) and value.pm is None, line
            checked += 1
    assert checked == len(values) == 90


def _runs(root, method, suite, quality, seeds, level, tasks):
    ident = identity(method, quality, suite=suite)
    ident["protocol"]["dataset.tasks"] = tasks
    out = []
    for seed in range(seeds):
        success = np.clip(level + 0.05 * np.arange(len(tasks)) / len(tasks) + 0.02 * seed,
                          0, 1)
        path = run_dir(root.parent, suite, quality, method, cell_id(ident), seed)
        run = FakeRun(method, quality, seed, success, 3000 * success, ident, path,
                      suite=suite, tasks=tasks)
        write(root, run)
        out.append(run)
    return out


@pytest.fixture(scope="module")
def paper_tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    runs = root / "runs"
    truth = {}
    for method, level in (("harmodt-f", 0.5), ("socodt", 0.6)):
        for draw in (0, 1, 2):
            suite = f"random-5:{draw}"
            truth[(method, draw)] = _runs(runs, method, suite, "near-optimal", 2,
                                          level + 0.03 * draw, resolve_suite(suite))
    truth["mt5"] = _runs(runs, "socodt", "mt5", "near-optimal", 3, 0.9, FIXED_SUITES["mt5"])
    assert main(["table", "--results-dir", str(root), "--resamples", "100"]) == 0
    return root / "tables", truth


def test_table3_aggregates_over_task_draws(paper_tables):
    out, truth = paper_tables
    frame = pd.read_csv(out / "table3.csv").set_index("row")
    for method in ("harmodt-f", "socodt"):
        per_draw = [np.mean([r.success.mean() for r in truth[(method, d)]]) for d in range(3)]
        row = frame.loc[method]
        assert row["draws"] == 3 and row["runs"] == 6 and row["tasks"] == 5
        assert row["mean_success_pct"] == pytest.approx(100 * np.mean(per_draw))
        assert row["std_over_draws_pct"] == pytest.approx(100 * np.std(per_draw, ddof=1))
    draws = (out / "table3.md").read_text()
    assert "random-5:2" in draws and "5 tasks near-optimal" in draws


def test_table2_marks_quoted_rows_and_keeps_them_out_of_statistics(paper_tables):
    out, _ = paper_tables
    markdown = (out / "table2.md").read_text()
    assert "| MTBC (quoted from the paper)" in markdown and "60.39 ± 0.86" in markdown
    frame = pd.read_csv(out / "table2.csv")
    assert set(frame[frame["source"] == "paper"]["row"]) == {
        "CARE (online)", "PaCo (online)", "Soft-M (online)", "D2R (online)", "MTBC", "MTIQL",
        "MTDIFF-P", "MTDIFF-P-ONEHOT"}
    table1 = pd.read_csv(out / "table1.csv")
    assert not table1["row"].str.contains("quoted").any()


def test_ours_beside_the_paper(paper_tables):
    out, truth = paper_tables
    frame = pd.read_csv(out / "paper.csv")
    mt5 = frame[(frame["table"] == 1) & (frame["method"] == "socodt")
                & (frame["suite"] == "mt5") & (frame["quality"] == "near-optimal")].iloc[0]
    ours = 100 * np.mean([r.success.mean() for r in truth["mt5"]])
    assert mt5["ours_mean"] == pytest.approx(ours) and mt5["paper_mean"] == 100.0
    assert mt5["diff"] == pytest.approx(ours - 100.0)
    random5 = frame[(frame["table"] == 3) & (frame["method"] == "socodt")
                    & (frame["quality"] == "near-optimal")].iloc[0]
    assert random5["paper_mean"] == 96.20 and random5["ours_n"] == 3
    assert (frame[frame["method"] == "mtdt"]["status"] == "no run").all()
    markdown = (out / "paper.md").read_text()
    assert "Meta-World 3.x -v3" in markdown and "of the paper's 8M" in markdown
    # columns we ran and columns we lack are named alike
    assert "| MT50 near-optimal " in markdown and "mt50 near-optimal" not in markdown
    latex = (out / "paper.tex").read_text()
    assert latex.isascii() and "\\toprule" in latex
