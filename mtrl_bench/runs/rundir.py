"""Run directories: where a run writes (layout, lock, metrics log); reading them back and
grouping them into cells is :mod:`mtrl_bench.analysis.cells`.

``<results>/runs/<suite>/<quality>/<method>/<cell>/seed<N>/`` (':' in a suite name becomes
'_'; ``<cell>`` is the hash of the run's identity, :mod:`mtrl_bench.identity`) holds
config.gin, meta.json, metrics.jsonl, final.json and checkpoint.pt. A run is finished when
meta.json says so and final.json exists; both are written atomically. Runs with equal
identities are the seeds of one cell; tables and figures group runs only this way.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import time
from pathlib import Path

from mtrl_bench.errors import RunLocked, UserError
from mtrl_bench.io import atomic_write_text, read_json

RESULTS_DIR_ENV = "MTRL_BENCH_RESULTS_DIR"
SEED_DIR = re.compile(r"seed\d+")


def default_results_dir() -> Path:
    """``$MTRL_BENCH_RESULTS_DIR``, else ``$XDG_DATA_HOME/mtrl-bench/results`` (default
    ``~/.local/share/mtrl-bench/results``): a user's own runs never land in, or get skipped
    because of, the repository's committed ``results/`` (read that with --results-dir)."""
    if os.environ.get(RESULTS_DIR_ENV):
        return Path(os.environ[RESULTS_DIR_ENV]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home).expanduser() / "mtrl-bench" / "results"


def results_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path).expanduser() if path else default_results_dir()


def run_dir(results: str | os.PathLike | None, suite: str, quality: str, method: str,
            cell: str, seed: int) -> Path:
    """``<results>/runs/<suite>/<quality>/<method>/<cell>/seed<N>``: a cell is one identity."""
    suite_dir = suite.replace(":", "_")
    return results_dir(results) / "runs" / suite_dir / quality / method / cell / f"seed{seed}"


def is_finished(path: Path) -> bool:
    try:
        return (path / "final.json").exists() and read_json(path / "meta.json")["status"] == (
            "finished"
        )
    except (OSError, ValueError, KeyError):
        return False


def tracked_by_git(path: Path) -> bool:
    """Whether run directory ``path`` holds files committed to a git repository (the
    repository's own results/): those are a record to keep, not a cache to redo."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "--", "meta.json", "final.json"], cwd=path,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


# ------------------------------------------------------------------ the lock

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on one run directory, held while a process works in it.

    ``flock`` on ``<dir>/.lock``: the kernel releases it when the holder exits, however it
    exits (SIGKILL included), and NFS emulates it with byte-range locks, so it holds across
    processes on one machine and, as far as the filesystem allows, across machines. The
    file names the holder (pid, host, since when) for the error a second process gets; a
    holder that died leaves its name behind, which the next process reports as taken over.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.took_over: str | None = None  # the dead holder this process replaced, if any

    def acquire(self) -> RunLock:

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _flock_briefly_retrying(fd)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(f"{self.path} is in use by {holder}; wait for it to finish, or "
                            "stop it first") from None
        except OSError as err:  # a filesystem without locks: say so, do not pretend
            os.close(fd)
            raise UserError(f"cannot lock {self.path / LOCK_FILE}: {err.strerror}") from None
        previous = _read_holder(fd, default="")
        if previous:
            self.took_over = previous
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Unlock and clear the holder, so the next process does not report a takeover."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _flock_briefly_retrying(fd: int, tries: int = 5) -> None:
    """Take the exclusive flock, retrying for ~0.1 s: :func:`lock_holder` takes a shared
    lock for an instant to look, which must not turn a free directory away."""
    import fcntl

    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt + 1 == tries:
                raise
            time.sleep(0.02)


def _read_holder(fd: int, default: str = "another process") -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"pid {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, TypeError, KeyError):
        return default


def lock_holder(path: Path) -> str | None:
    """Who holds the lock of run directory ``path``; None when nobody does (checked without
    taking it)."""
    import fcntl

    try:
        fd = os.open(Path(path) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)


class MetricsLog:
    """metrics.jsonl: one JSON record per line, each with "kind" and "step".

    On resume the log is cut back to the checkpoint's step, so records from work that was
    lost in a crash are replaced by the redone work instead of being duplicated.
    """

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut off by a crash
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def append(self, record: dict) -> None:
        """One line, flushed to the disk before returning (a crash keeps whole records;
        a torn last line is dropped on resume)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self, kind: str | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if kind is None or record.get("kind") == kind:
                out.append(record)
        return out
