"""`mtrl-bench plot` on synthetic run directories: what each figure draws is checked against
the records it was made from, cells are the tables' cells, and bad input gives one line."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from synthetic_runs import build, main_runs

from mtrl_bench.analysis import plots
from mtrl_bench.cli import main
from mtrl_bench.runs.rundir import histogram_edges

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    runs = build(root / "runs")
    columns, left_out = plots.load_columns(root / "runs")
    return root, runs, columns, left_out


def column(columns, label):
    return next(series for col, series in columns.items() if col.label == label)


def line(ax, label):
    return next(li for li in ax.get_lines() if li.get_label() == label)


def test_cells_are_the_tables_cells(synthetic):
    _, runs, columns, left_out = synthetic
    labels = {col.label for col in columns}
    assert labels == {"MT5 near-optimal [1]", "MT5 near-optimal [2]", "MT5 sub-optimal"}
    near = column(columns, "MT5 near-optimal [1]")
    rows = {cell.row.label: len(cell.runs) for cell, _ in near}
    assert rows["socodt"] == 5 and rows["socodt [alpha=25.0]"] == 2  # never mixed
    assert any("seed7" in line and "running" in line for line in left_out)


def test_learning_curves_plot_seed_means_with_final_points_marked(synthetic):
    _, runs, columns, _ = synthetic
    fig = plots.learning_curves(column(columns, "MT5 near-optimal [1]"), "near")
    members = main_runs(runs, "socodt", "near-optimal")
    curve = line(fig.axes[0], "socodt (n=5)")
    steps = sorted({r["step"] for run in members for r in run.records if r["kind"] == "eval"})
    expected = [100 * np.mean([r["mean_success"] for run in members for r in run.records
                               if r["kind"] == "eval" and r["step"] == s]) for s in steps]
    assert list(curve.get_xdata()) == steps
    assert list(curve.get_ydata()) == pytest.approx(expected)
    # the final (50-goal) evaluation is a star, the periodic ones dots, in the same colour
    markers = [li for li in fig.axes[0].get_lines() if li.get_color() == curve.get_color()
               and li.get_linestyle() == "None"]
    final = next(li for li in markers if li.get_marker() == "*")
    assert list(final.get_xdata()) == [400]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "final (50 goals/task)" in legend and "± 1 std over seeds" in legend
    # the band is ± one sample std over seeds
    values = [[r["mean_success"] for run in members for r in run.records
               if r["kind"] == "eval" and r["step"] == s] for s in steps]
    band = {(s, round(100 * (np.mean(v) + sign * np.std(v, ddof=1)), 6))
            for s, v in zip(steps, values) for sign in (-1, 1)}
    polygons = [{(x, round(y, 6)) for x, y in c.get_paths()[0].vertices}
                for c in fig.axes[0].collections if c.get_paths()]
    assert any(band <= polygon for polygon in polygons)


def test_mask_sparsity_is_aggregated_per_row(synthetic):
    _, runs, columns, _ = synthetic
    fig = plots.mask_sparsity(column(columns, "MT5 near-optimal [1]"), "near")
    curve = line(fig.axes[0], "socodt (n=5)")
    members = main_runs(runs, "socodt", "near-optimal")
    masks = [[r for r in run.records if r["kind"] == "mask"] for run in members]
    expected = [100 * np.mean([np.mean(m[i]["sparsity"]) for m in masks])
                for i in range(len(masks[0]))]
    assert list(curve.get_ydata()) == pytest.approx(expected)
    assert len(fig.axes) == 1  # one panel, not one per run


def test_beta_schedule_draws_each_rows_recorded_betas(synthetic):
    _, runs, columns, _ = synthetic
    fig = plots.beta_schedule_figure(column(columns, "MT5 near-optimal [1]"), "near")
    members = main_runs(runs, "socodt", "near-optimal")
    expected = sorted({(r["step"], r["beta"]) for run in members for r in run.records
                       if r["kind"] == "mask" and r.get("beta") is not None})
    curve = line(fig.axes[0], "socodt")
    assert list(zip(curve.get_xdata(), curve.get_ydata())) == expected
    labels = {li.get_label() for li in fig.axes[0].get_lines()}
    assert not any(label.startswith(("promptdt", "mtdt")) for label in labels)  # no masks
    assert fig.axes[0].get_xlabel() == "step"


def test_conflict_histogram_in_score_units_with_thresholds(synthetic):
    _, runs, columns, _ = synthetic
    series = column(columns, "MT5 near-optimal [1]")
    members = main_runs(runs, "socodt", "near-optimal")
    cell_runs = next(recs for cell, recs in series if cell.row.label == "socodt")
    hists = plots.pooled_histograms(cell_runs)
    step, edges, counts, threshold = hists[0]
    records = [next(r for r in run.records if r["kind"] == "mask" and r["step"] == step)
               for run in members]
    expected = np.zeros(len(edges) - 1)
    for record in records:
        hist = record["conflict_hist"]
        expected[hist["first"]:hist["first"] + len(hist["counts"])] += hist["counts"]
    assert np.array_equal(counts, expected)
    assert list(edges) == histogram_edges(-22, 2, 4)
    assert threshold == pytest.approx(np.median([t for r in records
                                                 for t in r["conflict_threshold"]]))
    fig = plots.conflict_scores_figure(series, "near")
    ax = fig.axes[[a.get_title() for a in fig.axes].index("socodt (n=5)")]
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "log"
    assert any(li.get_xdata()[0] == pytest.approx(threshold) for li in ax.get_lines())


def test_sensitivity_figure_for_a_one_setting_difference(tmp_path):
    from synthetic_runs import add_sensitivity_runs

    runs_dir = tmp_path / "runs"
    truth = add_sensitivity_runs(runs_dir)  # {beta_min: (seeds, tasks) success}
    columns, _ = plots.load_columns(runs_dir)
    figures, skipped = plots.sensitivity(columns)
    (stem, fig), = figures
    assert skipped == []
    assert stem == "sensitivity_mt5_near-optimal_socodt_socodt.beta_min"
    container = fig.axes[0].containers[0]
    xs, ys = container.lines[0].get_xdata(), container.lines[0].get_ydata()
    assert list(xs) == sorted(truth)
    for x, y in zip(xs, ys):
        per_run = truth[x].mean(axis=1)
        assert y == pytest.approx(100 * per_run.mean())
    low_caps = container.lines[1][0].get_ydata()
    per_run = truth[xs[0]].mean(axis=1)
    half = sps.t.ppf(0.975, per_run.size - 1) * per_run.std(ddof=1) / np.sqrt(per_run.size)
    assert low_caps[0] == pytest.approx(100 * (per_run.mean() - half))


@pytest.mark.slow
def test_plot_command_writes_every_figure_and_an_index(synthetic, capsys):
    root, _, _, _ = synthetic
    out = root / "figures"
    out.mkdir()  # the previous plot's index: a figure these runs no longer give, one they
    # give again, and a "figure" that cannot be removed; the user's own file is unlisted
    (out / "index.md").write_text("# Figures\n\n- `gap_vs_training_mt5_near-optimal.png`: x\n"
                                  "- `learning_curves_mt5_sub-optimal.png`: y\n"
                                  "- `stuck.png`: z\n")
    (out / "gap_vs_training_mt5_near-optimal.png").write_bytes(PNG_SIGNATURE)
    (out / "stuck.png").mkdir()
    (out / "mine.png").write_bytes(PNG_SIGNATURE)
    assert main(["plot", "--results-dir", str(root)]) == 0
    stdout = capsys.readouterr().out
    assert not (out / "gap_vs_training_mt5_near-optimal.png").exists()
    assert "removed gap_vs_training_mt5_near-optimal.png" in stdout
    assert (out / "mine.png").exists()  # not listed by an earlier plot: never touched
    assert "could not remove stuck.png" in stdout  # and listed, to be tried next time
    assert "- `stuck.png`: stale" in (out / "index.md").read_text()
    (out / "stuck.png").rmdir()
    names = sorted(p.name for p in out.glob("*.png") if p.name != "mine.png")
    for kind in ("learning_curves", "mask_sparsity", "beta_schedule", "conflict_scores",
                 "aggregate_metrics"):
        assert any(n.startswith(f"{kind}_mt5_near-optimal_") for n in names), kind
    assert "learning_curves_mt5_sub-optimal.png" in names
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    index = (out / "index.md").read_text()
    assert "seed7" in index and "running" in index and "left out: " in stdout
    assert "skipped mask_sparsity for MT5 near-optimal [2]" in stdout  # promptdt: no masks


def test_plot_errors_are_one_line_with_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    real = tmp_path / "real"
    build(real / "runs")
    cases = [
        (["--runs", str(tmp_path / "nowhere")], "does not exist"),
        (["--runs", str(tmp_path)], "no finished runs with metrics"),
        (["--runs", str(real / "runs"), "--out", str(blocker / "figures")],
         "cannot create figures dir"),
    ]
    for argv, message in cases:
        assert main(["plot", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err


def test_aggregate_metrics_draw_the_tables_numbers(synthetic):
    """Performance profiles, optimality gap and P(X > reference) of each row, from the
    column's final success: curves and points recomputed here by their definitions."""
    _, runs, columns, _ = synthetic
    fig = plots.aggregate_metrics(column(columns, "MT5 near-optimal [1]"), "near")
    profile_ax, gap_ax, poi_ax = fig.axes[:3]
    success = np.stack([r.success for r in main_runs(runs, "socodt", "near-optimal")])
    curve = line(profile_ax, "socodt (n=5)")
    taus = curve.get_xdata() / 100
    expected = [(success.ravel() > t).mean() for t in taus]
    np.testing.assert_allclose(curve.get_ydata(), 100 * np.array(expected))
    labels = [t.get_text() for t in gap_ax.get_yticklabels()]
    index = labels.index("socodt (n=5)")
    gap_points = [li for li in gap_ax.get_lines() if len(li.get_xdata()) == 1
                  and li.get_ydata()[0] == index]
    assert gap_points[0].get_xdata()[0] == pytest.approx(100 * (1 - success.mean()))
    assert "harmodt-f" in poi_ax.get_xlabel()
    reference = np.stack([r.success for r in main_runs(runs, "harmodt-f", "near-optimal")])
    poi = np.mean([np.mean([(a > b) + 0.5 * (a == b) for a in success[:, t]
                            for b in reference[:, t]]) for t in range(success.shape[1])])
    points = [li for li in poi_ax.get_lines() if len(li.get_xdata()) == 1
              and li.get_ydata()[0] == index]
    assert points[0].get_xdata()[0] == pytest.approx(poi)


def _fixed_goal_values(run):
    """A run's success on goals 0..4 at every evaluation, the final one from episodes.json."""
    from synthetic_runs import EVAL_GOALS, episodes

    points = {r["step"]: r["mean_success"] for r in run.records
              if r["kind"] == "eval" and r["num_goals"] == EVAL_GOALS}
    final = max(r["step"] for r in run.records if r["kind"] == "eval")
    points[final] = np.mean([e["success"] for e in episodes(run) if e["goal"] < EVAL_GOALS])
    return points


def test_fixed_goal_curves_compare_like_with_like_with_seed_intervals(synthetic):
    _, runs, columns, _ = synthetic
    fig = plots.fixed_goal_curves(column(columns, "MT5 near-optimal [1]"), "near")
    members = main_runs(runs, "socodt", "near-optimal")
    curve = line(fig.axes[0], "socodt (n=5)")
    values = [_fixed_goal_values(run) for run in members]
    steps = sorted(values[0])
    assert list(curve.get_xdata()) == steps
    per_step = [np.array([v[s] for v in values]) for s in steps]
    assert list(curve.get_ydata()) == pytest.approx([100 * v.mean() for v in per_step])
    final = per_step[-1]  # the band is the 95% t-interval over seeds
    half = sps.t.ppf(0.975, 4) * final.std(ddof=1) / np.sqrt(5)
    polygons = [c.get_paths()[0].vertices for c in fig.axes[0].collections if c.get_paths()]
    assert any(np.any(np.isclose(p[:, 1], 100 * (final.mean() + half))) for p in polygons)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "final on all 50 goals/task" in legend and "goals 0–4" in fig.axes[0].get_title()


def test_gap_vs_training_is_masked_minus_promptdt_with_welch_intervals(synthetic):
    _, runs, columns, _ = synthetic
    fig = plots.gap_vs_training(column(columns, "MT5 near-optimal [1]"), "near")
    labels = [li.get_label() for li in fig.axes[0].get_lines() if "−" in li.get_label()]
    assert "socodt − promptdt" in labels and not any(lb.startswith("mtdt") for lb in labels)
    gap = line(fig.axes[0], "socodt − promptdt")
    socodt = [_fixed_goal_values(r) for r in main_runs(runs, "socodt", "near-optimal")]
    base = [_fixed_goal_values(r) for r in main_runs(runs, "promptdt", "near-optimal")]
    steps = sorted(socodt[0])
    expected = [100 * (np.mean([v[s] for v in socodt]) - np.mean([v[s] for v in base]))
                for s in steps]
    assert list(gap.get_ydata()) == pytest.approx(expected)
