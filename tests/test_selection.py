"""Tables, the tidy CSV and the figures use one selection of runs: a finished run whose
scores are unusable (a success rate of 1.2) is left out of all of them, and each output
lists it as left out."""

from __future__ import annotations

import numpy as np
import pandas as pd
from synthetic_runs import FINAL_GOALS, SUITE, FakeRun, build, eval_record, identity, write

from mtrl_bench.analysis import plots
from mtrl_bench.cli import main
from mtrl_bench.identity import cell_id
from mtrl_bench.runs.rundir import run_dir


def _add_unusable_run(root):
    """A sixth seed of promptdt's main near-optimal cell, with a success rate of 1.2."""
    ident = identity("promptdt", "near-optimal")
    success = np.array([0.5, 1.2, 0.4, 0.3, 0.6])
    path = run_dir(root.parent, SUITE, "near-optimal", "promptdt", cell_id(ident), 9)
    total = ident["protocol"]["trainer.total_steps"]
    write(root, FakeRun("promptdt", "near-optimal", 9, success, 4000 * success, ident, path,
                        records=[eval_record(total, FINAL_GOALS, success, 4000 * success)]))


def test_a_run_with_unusable_scores_is_in_no_table_csv_or_figure(tmp_path, capsys):
    build(tmp_path / "runs")
    _add_unusable_run(tmp_path / "runs")
    assert main(["table", "--results-dir", str(tmp_path), "--resamples", "200"]) == 0
    tables = tmp_path / "tables"
    table1 = pd.read_csv(tables / "table1.csv")
    near = table1[(table1["row"] == "promptdt") & (table1["column"] == "MT5 near-optimal [1]")]
    assert list(near["n"]) == [5]
    long = pd.read_csv(tables / "runs_long.csv")
    promptdt = long[(long["row"] == "promptdt") & (long["column"] == "MT5 near-optimal [1]")]
    assert sorted(set(promptdt["seed"])) == [0, 1, 2, 3, 4]  # not seed 9
    for name in ("table1.md", "iqm.md", "mask_dynamics.md"):
        text = (tables / name).read_text()
        assert "promptdt mt5 near-optimal seed9" in text and "no usable" in text, name

    columns, left_out = plots.load_columns(tmp_path / "runs")
    series = next(s for c, s in columns.items() if c.label == "MT5 near-optimal [1]")
    cell, runs = next((c, r) for c, r in series if c.row.label == "promptdt")
    assert len(cell.runs) == 5 and len(runs) == 5 and 9 not in cell.seeds
    assert any("seed9" in line and "no usable" in line for line in left_out)
    assert main(["plot", "--results-dir", str(tmp_path)]) == 0
    index = (tmp_path / "figures" / "index.md").read_text()
    assert "promptdt mt5 near-optimal seed9" in index and "no usable" in index
    capsys.readouterr()
