"""What a new user meets first: the README's commands in a checkout, the help texts, and
the one-line messages of the rough edges (issue: "a first contact that really runs")."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mtrl_bench.cli import build_parser, main, run_request
from mtrl_bench.errors import DatasetError, UserError
from mtrl_bench.plan import plan_run
from mtrl_bench.request import RunRequest
from mtrl_bench.runs.rundir import RunLock, is_finished, results_dir
from mtrl_bench.runs.runner import run_dir_of

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _readme_commands() -> list[str]:
    """The two set-up commands at the top of README.md (the first code block)."""
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


@pytest.fixture
def new_user(monkeypatch, tmp_path):
    """A fresh shell in the clone's root: no results or data folder configured."""
    for name in ("MTRL_BENCH_RESULTS_DIR", "MTRL_BENCH_DATA_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(REPO)
    return tmp_path / "home"


def test_the_readme_s_first_command_trains_in_a_checkout(new_user):
    """Planned from the clone's root as README says, the first command would train: its run
    directory is the user's own (not the committed showcase, which holds a finished run of
    the same cell, so before the fix the command printed that run and exited)."""
    first = _readme_commands()[0]
    argv = shlex.split(first.split("&&")[-1])
    assert argv[:2] == ["mtrl-bench", "run"], first
    path = run_dir_of(run_request(build_parser().parse_args(argv[1:])).plan())
    assert new_user in path.parents and REPO not in path.parents
    assert not is_finished(path)
    committed = run_dir_of(plan_run("promptdt", "cpu", results=str(REPO / "results")))
    assert committed.relative_to(REPO / "results") == path.relative_to(results_dir())
    assert is_finished(committed), "the committed run of this cell is the reuse trap"


def test_the_readme_s_second_command_prints_pass_and_fail_counts():
    """pytest's configuration adds no -q of its own: with README's `-q` it still ends on a
    'N passed' line (two -q's print none)."""
    second = _readme_commands()[1]
    assert second.endswith("python -m pytest -q"), second
    test = "tests/test_stats.py::test_welch_and_mann_whitney_match_scipy_and_refuse_one_seed"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          test], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert re.search(r"^1 passed", out.stdout, re.MULTILINE), out.stdout[-2000:]


def test_force_does_not_overwrite_a_committed_run_unless_asked(tmp_path):
    committed = run_dir_of(plan_run("promptdt", "cpu", results=str(REPO / "results")))
    def files():  # the lock file (git-ignored) comes and goes with every attempt
        return {p.name: p.stat().st_mtime_ns for p in committed.iterdir() if p.name != ".lock"}

    before = files()
    request = RunRequest("promptdt", preset="cpu", results_dir=str(REPO / "results"),
                         data_dir=str(tmp_path / "data"), force=True, progress=False)
    with pytest.raises(UserError, match="committed to git; --force would overwrite it.*"
                                        "--overwrite-committed"):
        from mtrl_bench.runs.runner import run

        run(request)
    assert files() == before
    args = build_parser().parse_args(["run", "--method", "promptdt", "--force",
                                      "--overwrite-committed"])
    assert run_request(args).overwrite_committed


def _help(*command: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mtrl_bench", *command, "--help"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())


def test_help_texts_say_what_each_option_does_and_its_real_default():
    parser = build_parser()
    for name in ("run", "sweep"):
        sub = parser._subparsers._group_actions[0].choices[name]
        bare = [a.option_strings or [a.dest] for a in sub._actions if not a.help]
        assert not bare, f"{name}: options without help: {bare}"
    run_help = _help("run")
    assert "~/.cache/mtrl-bench/data" in run_help and "~/.local/share/mtrl-bench/results" \
        in run_help
    assert "default 0" not in run_help and "the preset's, 0 in every preset" in run_help
    assert "--quality {near-optimal,sub-optimal}" in run_help  # as `data --quality` shows it
    assert "3 diverged" in run_help and "75 the run directory is locked" in run_help
    assert "--gin-file FILE" in run_help and "--gin-binding BINDING" in run_help
    assert "1 some run failed" in _help("sweep")
    # dopamine's underscore spellings still work, dashed ones are the documented ones
    for flag in ("--gin_binding", "--gin-binding"):
        args = parser.parse_args(["run", "--method", "socodt", flag, "socodt.alpha = 5.0"])
        assert args.gin_binding == ["socodt.alpha = 5.0"]
    # README documents the exit statuses too
    for status in ("75", "`3`", "130"):
        assert status in README.split("## Usage", 1)[1].split("## Protocol", 1)[0], status


def test_quality_is_checked_the_same_way_in_run_and_data(tmp_path, capsys):
    for command in (["run", "--method", "promptdt", "--preset", "tiny"],
                    ["data", "--suite", "mt5"]):
        assert main([*command, "--quality", "great", "--data-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unknown quality 'great'; valid: near-optimal, " \
            "sub-optimal" in err, err


def test_a_bare_word_in_a_gin_binding_is_explained_not_dumped(capsys):
    with pytest.raises(UserError) as err:
        plan_run("promptdt", "tiny", bindings=["Trainer.learning_rate = fast"])
    assert "<ast." not in str(err.value) and " at 0x" not in str(err.value)
    assert "Failed to parse token 'fast'" in str(err.value) and '("fast")' in str(err.value)


def test_small_sizes_are_not_printed_as_zero():
    from mtrl_bench.data.generation import _gb

    assert [_gb(x) for x in (0, 512, 48_000, 2.5e6, 1.234e9)] == [
        "0 bytes", "512 bytes", "48 kB", "2.5 MB", "1.23 GB"]


def test_a_disk_without_room_names_sizes_a_reader_can_compare(tmp_path, monkeypatch):
    """A nearly full disk, simulated by its reported free space: both sizes stay readable."""
    import shutil

    from mtrl_bench.data import generation

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(generation.shutil, "disk_usage",
                        lambda path: usage._replace(free=20_000))
    with pytest.raises(UserError) as err:
        generation.check_size(["reach-v3"], 2, 500, tmp_path)
    assert "need about 60 kB on disk" in str(err.value) and "has 20 kB free" in str(err.value)


@pytest.mark.slow
def test_the_regenerate_hint_names_the_data_dir_and_following_it_repairs(tmp_path):
    from mtrl_bench.data.dataset import dataset_path, load_suite_dataset
    from mtrl_bench.data.generation import generate_suite_dataset

    data_dir = tmp_path / "my data"
    sizes = dict(episodes=2, seed=0, episode_length=20)
    generate_suite_dataset(["reach-v3"], "near-optimal", data_dir=data_dir, workers=1,
                           progress=False, **sizes)
    path = dataset_path(data_dir, "reach-v3", "near-optimal", 2, 0, 20)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(DatasetError) as err:
        load_suite_dataset(["reach-v3"], "near-optimal", data_dir=data_dir, **sizes)
    command = re.search(r"`(mtrl-bench data [^`]+)`", str(err.value)).group(1)
    assert f"--data-dir {shlex.quote(str(data_dir))}" in command
    assert main(shlex.split(command)[1:] + ["--no-progress", "--workers", "1"]) == 0
    assert load_suite_dataset(["reach-v3"], "near-optimal", data_dir=data_dir, **sizes)


def test_a_folder_where_a_dataset_file_belongs_is_named(tmp_path):
    from mtrl_bench.data.dataset import dataset_path
    from mtrl_bench.data.generation import generate_suite_dataset
    from mtrl_bench.io import atomic_write_text

    path = dataset_path(tmp_path, "reach-v3", "near-optimal", 2, 0, 20)
    path.mkdir(parents=True)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + " is a folder"):
        generate_suite_dataset(["reach-v3"], "near-optimal", data_dir=tmp_path, episodes=2,
                               episode_length=20, workers=1, progress=False)
    with pytest.raises(IsADirectoryError) as err:  # and any atomic write names its target
        atomic_write_text(path, "x")
    assert err.value.filename == str(path) and not list(path.parent.glob(".*.tmp"))


def test_a_killed_run_is_listed_as_stopped_not_running_forever(tmp_path):
    from mtrl_bench.runs.rundir import load_run

    path = tmp_path / "runs" / "mt5" / "near-optimal" / "promptdt" / "abc" / "seed0"
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"status": "running", "method": "promptdt"}))
    run = load_run(path)
    assert run.status == "stopped" and "no process holds its lock" in run.reason
    with RunLock(path):  # while a process works in it, it is running
        assert load_run(path).status == "running"


def test_the_tiny_preset_logs_training_records():
    plan = plan_run("promptdt", "tiny")
    assert plan.arguments["Trainer"]["log_every"] <= plan.arguments["Trainer"]["total_steps"]


@pytest.mark.slow
def test_two_runs_of_one_cell_in_one_place_are_bit_identical(tmp_path):
    """README's contract: same code, same machine numerics, same threads: every logged
    loss, evaluation and final number equal to the last bit (only timings may differ)."""
    from mtrl_bench.runs.rundir import MetricsLog

    def make(folder):
        argv = ["run", "--method", "socodt", "--preset", "tiny", "--no-progress", "--threads",
                "1", "--results-dir", str(tmp_path / folder), "--data-dir",
                str(tmp_path / "data")]
        assert main(argv) == 0
        return run_dir_of(plan_run("socodt", "tiny", results=str(tmp_path / folder)))

    first, second = make("a"), make("b")
    timing = {"sequences_per_s", "seconds", "wall_s", "elapsed_s"}

    def records(path):
        return [{k: v for k, v in r.items() if k not in timing}
                for r in MetricsLog(path / "metrics.jsonl").records()]

    assert records(first) == records(second) and len(records(first)) > 5
    assert (first / "final.json").read_text() == (second / "final.json").read_text()
    assert (first / "episodes.json").read_text() == (second / "episodes.json").read_text()
    meta = [json.loads((p / "meta.json").read_text()) for p in (first, second)]
    assert meta[0]["numerics"] == meta[1]["numerics"] and meta[0]["streams"] == meta[1][
        "streams"]


def test_a_run_from_an_edited_checkout_says_so_in_its_commit(tmp_path):
    from mtrl_bench.provenance import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "c")
    clean = git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", clean)
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+changes"
