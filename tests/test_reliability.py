"""Nothing lost, nothing mixed: locks, divergence, kills at every record boundary, full disks
and bad input, with real `mtrl-bench run` processes at the tiny preset."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from toolbox import HANG_GUARD_S

from mtrl_bench.cli import main
from mtrl_bench.plan import plan_run
from mtrl_bench.runs.rundir import LOCK_FILE, MetricsLog, is_finished, lock_holder
from mtrl_bench.runs.runner import run_dir_of

TINY = ["--preset", "tiny", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny preset's dataset, generated once for the module."""
    root = tmp_path_factory.mktemp("reliability-data")
    assert main(["data", "--suite", "random-2:0", "--quality", "near-optimal", "--episodes",
                 "6", "--episode-length", "60", "--workers", "1", "--data-dir", str(root),
                 "--no-progress"]) == 0
    return str(root)


def _command(results, data_dir, *args):
    return [sys.executable, "-m", "mtrl_bench", "run", *TINY, "--results-dir", str(results),
            "--data-dir", data_dir, *args]


def _path(results, method, *bindings):
    return run_dir_of(plan_run(method, "tiny", bindings=list(bindings), results=results))


@pytest.mark.slow
def test_a_locked_run_directory_admits_one_process(tmp_path, data_dir, capsys):
    """Two real processes on one run: the second stops at once naming the first; a sweep
    skips the cell; a lock left by a dead process is taken over with a message; leftover
    temporary files are removed under the lock."""
    results = tmp_path / "results"
    path = _path(results, "harmodt-r", "Run.seed = 4")
    path.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": "old-host",
                                              "since": "2026-01-01T00:00:00"}))
    leftover = path / ".checkpoint.pt.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")

    first = subprocess.Popen(_command(results, data_dir, "--method", "harmodt-r", "--seed", "4"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while lock_holder(path) is None and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    holder = lock_holder(path)
    assert holder is not None and f"pid {first.pid} " in holder
    second = subprocess.run(_command(results, data_dir, "--method", "harmodt-r", "--seed", "4"),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 75
    assert second.stderr.strip().splitlines() == [
        f"mtrl-bench run: error: {path} is in use by {holder}; wait for it to finish, or "
        "stop it first"]
    assert main(["sweep", "--methods", "harmodt-r", "--suites", "random-2:0", "--seeds", "4",
                 "--results-dir", str(results), "--dry-run", "--", *TINY, "--data-dir",
                 data_dir]) == 0
    out = capsys.readouterr().out
    assert "1 locked by another process, 0 to run" in out
    _, err = first.communicate(timeout=HANG_GUARD_S)
    assert first.returncode == 0, err
    assert f"its last holder, pid {dead.pid} on old-host (since 2026-01-01T00:00:00), is gone" \
        in err
    assert not leftover.exists() and is_finished(path)
    assert lock_holder(path) is None and (path / LOCK_FILE).read_text() == ""


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line_and_says_so_when_rerun(tmp_path, data_dir):
    results = tmp_path / "results"
    args = ["--method", "socodt", "--gin_binding", "Trainer.learning_rate = 1e6"]
    path = _path(results, "socodt", "Trainer.learning_rate = 1e6")
    first = subprocess.run(_command(results, data_dir, *args), capture_output=True, text=True,
                           timeout=HANG_GUARD_S)
    assert first.returncode == 3
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "training diverged at step 3: non-finite loss for " in lines[0]
    assert "has no checkpoint (none was good)" in lines[0]
    assert not (path / "checkpoint.pt").exists()
    meta = json.loads((path / "meta.json").read_text())
    assert meta["status"] == "diverged" and "step 3" in meta["diverged"]

    def no_constants(name):
        raise AssertionError(f"metrics.jsonl holds {name}")

    log = path / "metrics.jsonl"  # no NaN record is logged (here: none at all)
    for line in (log.read_text().splitlines() if log.exists() else []):
        json.loads(line, parse_constant=no_constants)
    again = subprocess.run(_command(results, data_dir, *args), capture_output=True, text=True,
                           timeout=HANG_GUARD_S)
    assert again.returncode == 3 and "diverged before (training diverged at step 3" in \
        again.stderr and "would again from the start (it has no good checkpoint)" in \
        again.stderr and "pass --force to start it over" in again.stderr


KILLER = textwrap.dedent("""
    import os, signal, sys
    from mtrl_bench import cli
    from mtrl_bench.runs import rundir, runner
    from mtrl_bench.training import trainer
    point, count = sys.argv[1], int(sys.argv[2])
    seen = [0]

    def maybe_die(hit):
        if hit:
            seen[0] += 1
            if seen[0] == count:
                os.kill(os.getpid(), signal.SIGKILL)

    append = rundir.MetricsLog.append
    def patched_append(self, record):
        append(self, record)
        kind = record["kind"] + ("@final" if record.get("num_goals") == 3 else "")
        maybe_die(kind == point)
    rundir.MetricsLog.append = patched_append

    save = trainer.Trainer.save_checkpoint
    def patched_save(self, path):
        save(self, path)
        maybe_die(point == "checkpoint")
    trainer.Trainer.save_checkpoint = patched_save

    write_json = runner.atomic_write_json
    def patched_write_json(path, obj):
        write_json(path, obj)
        maybe_die(point == os.path.basename(path))
    runner.atomic_write_json = patched_write_json
    if __name__ == "__main__":  # env workers are spawned: they import this file too
        sys.exit(cli.main(sys.argv[3:]))
""")
#: (where each process of the chain is SIGKILLed, after how many of those events in it), in
#: the order the tiny run meets them (train 3, mask 6, eval 10, mask 11, checkpoint 15,
#: final eval 20): each resumed process still has its kill point ahead of it
KILL_POINTS = [("train", 1), ("eval", 1), ("mask", 1), ("checkpoint", 1), ("eval@final", 1),
               ("final.json", 1)]
TIMING = ("sequences_per_s",)


def _log(path):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in MetricsLog(path / "metrics.jsonl").records()]


@pytest.mark.slow
def test_kills_at_every_record_boundary_leave_no_duplicate_or_missing_records(tmp_path,
                                                                              data_dir):
    """SIGKILL right after each kind of record (and after a checkpoint, and after
    final.json), each process resuming the one killed before it: the log is always a prefix
    of an uninterrupted run's, and after the last resume metrics.jsonl and final.json equal
    it. (One chain of kills, not one run per kill point: the same points, half the runs.)"""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    # logs every 3 steps, checkpoints every 5: a resumed run's first loss record must still
    # cover its whole interval (the open interval is in the checkpoint)
    args = ["--method", "socodt", "--gin_binding", "Trainer.log_every = 3"]
    reference = tmp_path / "reference"
    subprocess.run(_command(reference, data_dir, *args), check=True, capture_output=True,
                   timeout=HANG_GUARD_S)
    expected_path = _path(reference, "socodt", "Trainer.log_every = 3")
    expected = _log(expected_path)
    expected_final = json.loads((expected_path / "final.json").read_text())["final"]
    kinds = {r["kind"] + ("@final" if r.get("num_goals") == 3 else "") for r in expected}
    assert kinds == {"train", "mask", "eval", "eval@final"}
    results = tmp_path / "killed"
    path = _path(results, "socodt", "Trainer.log_every = 3")
    command = _command(results, data_dir, *args)
    for point, count in KILL_POINTS:
        killed = subprocess.run([sys.executable, str(script), point, str(count), *command[3:]],
                                capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-500:])
        assert not is_finished(path), point
        log = _log(path)
        assert log == expected[:len(log)], point
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert resumed.returncode == 0, resumed.stderr[-500:]
    assert _log(path) == expected
    assert json.loads((path / "final.json").read_text())["final"] == expected_final
    assert not list(path.glob(".*.tmp"))


def _limited_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_write_that_fails_mid_run_is_one_line_naming_the_file(tmp_path, data_dir):
    """Files may not grow past 50 kB: the first checkpoint cannot be written (as on a full
    disk). One line names it, and no temporary file is left behind."""
    results = tmp_path / "results"
    path = _path(results, "harmodt-f")
    run = subprocess.run(_command(results, data_dir, "--method", "harmodt-f"),
                         capture_output=True, text=True, timeout=HANG_GUARD_S,
                         preexec_fn=_limited_file_size(50_000))
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-800:]
    assert f"cannot write checkpoint {path / 'checkpoint.pt'}: the write stopped short" in \
        lines[0]
    assert not list(path.glob(".*.tmp")) and not (path / "checkpoint.pt").exists()


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, data_dir):
    """A real full filesystem: a 200 kB tmpfs (needs mount rights; skipped without them)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs",
                                            str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        run = subprocess.run(_command(mount / "results", data_dir, "--method", "harmodt-f"),
                             capture_output=True, text=True, timeout=HANG_GUARD_S)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, run.stderr[-800:]
        assert "cannot write checkpoint" in lines[0] and str(mount) in lines[0]
        assert not list(mount.rglob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("args, message", [
    (["--gin_binding", "Trainer.learning_rate = 'fast'"],
     "Trainer.learning_rate must be float, got 'fast'"),
    (["--gin_binding", "Trainer.learning_rate = -1e-4"],
     "Trainer.learning_rate must be a positive number below 1e+30, got -0.0001"),
    (["--gin_binding", "PromptDTConfig.n_head = 3"],
     "PromptDTConfig: n_embd=32 is not divisible by n_head=3"),
    (["--gin_binding", "Run.eval_goals = 99"], "num_goals=99 is out of range 1..50"),
    (["--gin_binding", "socodt.q1 = 0.99"], "socodt: need 0 <= q1 < q3 <= 1"),
    (["--gin_binding", "PromptDTConfig.n_head = 0"], "PromptDTConfig: n_head must be >= 1"),
    (["--gin_binding", "PromptDTConfig.dropout = 2.0"], "dropout must be in [0, 1)"),
    (["--gin_binding", "Run.episode_length = 2"], "Run.episode_length=2 is shorter than"),
    (["--gin_binding", "Trainer.learning_rate = 1e39"], "positive number below 1e+30"),
    (["--gin_binding", "Run.batch_size = 100000000"], "at most 4096 are supported"),
    (["--seed", "-1"], "Run.seed must be >= 0, got -1"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, capsys, args, message):
    results, data = tmp_path / "results", tmp_path / "data"
    code = main(["run", "--method", "socodt", *TINY, "--results-dir", str(results),
                 "--data-dir", str(data), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not data.exists() and not results.exists()  # nothing generated, nothing written


def test_an_unusable_data_dir_is_one_line_before_anything_is_written(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["run", "--method", "promptdt", *TINY, "--results-dir", str(tmp_path / "r"),
                 "--data-dir", str(blocker / "data")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(blocker) in err, err
    assert not (tmp_path / "r").exists()
    code = main(["data", "--suite", "mt5", "--quality", "near-optimal", "--data-dir",
                 str(blocker / "data")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(blocker) in err, err


@pytest.mark.slow
def test_a_checkpoint_without_its_log_is_not_resumed(tmp_path, data_dir):
    """As after a --force interrupted midway by an older version: records are gone, so the
    run must start over rather than finish with a log that lacks them."""
    results = tmp_path / "results"
    command = _command(results, data_dir, "--method", "promptdt")
    subprocess.run(command, check=True, capture_output=True, timeout=HANG_GUARD_S)
    path = _path(results, "promptdt")
    for name in ("final.json", "episodes.json", "metrics.jsonl"):
        (path / name).unlink()
    again = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert again.returncode == 2 and "metrics.jsonl lacks records its checkpoint (step 20)" \
        in again.stderr
