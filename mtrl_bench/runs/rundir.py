"""Run directories, the run record: where a run writes (layout, lock, metrics log) and how
one is read back (:class:`RunRecord`). The one module that knows the layout; grouping runs
into cells is :mod:`mtrl_bench.analysis.cells`, which reads runs only through this module.

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
from dataclasses import dataclass, field
from pathlib import Path

from mtrl_bench.errors import RunLocked, UserError
from mtrl_bench.io import atomic_write_json, atomic_write_text, read_json

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


#: below ``<results>/runs``: suite/quality/method/cell/seedN, and the layout before run
#: identities (suite/quality/method/seedN), whose runs can only be listed as left out
RUN_PATTERN, LEGACY_PATTERN = "*/*/*/*/seed*", "*/*/*/seed*"


def run_dir(results: str | os.PathLike | None, suite: str, quality: str, method: str,
            cell: str, seed: int) -> Path:
    """``<results>/runs/<suite>/<quality>/<method>/<cell>/seed<N>``: a cell is one identity."""
    suite_dir = suite.replace(":", "_")
    return results_dir(results) / "runs" / suite_dir / quality / method / cell / f"seed{seed}"


def _layout_names(path: Path) -> tuple[str, str, str]:
    """(suite folder, quality, method) named by the path of a run directory (:func:`run_dir`)."""
    suite_dir, quality, method = path.parts[-5:-2]
    return suite_dir, quality, method


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
CHECKPOINT = "checkpoint.pt"  # the run's last checkpoint (kept when finished; git-ignored)


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


# ------------------------------------------------------------------ meta.json, as written


@dataclass
class RunMeta:
    """meta.json of a run as its runner keeps it: read once, changed through the methods
    below (each names the moment of a run that changes it), and written whole, atomically,
    by :meth:`save`. Keys it does not know (added by a later mtrl-bench, or by
    ``upgrade-records``) are kept as they are."""

    path: Path  # the meta.json file
    data: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> RunMeta:
        """The run's meta.json, or an empty one where there is none yet (or only an
        unreadable one, which the run rewrites)."""
        try:
            data = read_json(path)
        except (OSError, ValueError):
            data = {}
        return cls(path, data if isinstance(data, dict) else {})

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def start(self, record: dict) -> list[str]:
        """A (re)start: what the run is, what runs it and under which machine numerics
        (``record``, in the order meta.json lists them, "status" and "started" among them:
        the status becomes running, the start time is kept from the first start). Returns
        the keys of every numerics the run has run under when they differ (a resume
        elsewhere, also recorded as "numerics_mixed"), else []."""
        earlier, now = self.data.get("numerics"), record["numerics"]
        mixed = []
        if earlier and earlier.get("key") != now["key"]:
            mixed = sorted({*self.data.get("numerics_mixed", [earlier["key"]]), now["key"]})
            self.data["numerics_mixed"] = mixed
        started = self.data.get("started") or datetime.datetime.now().isoformat(
            timespec="seconds")
        self.data.update({**record, "status": "running", "started": started})
        self.save()
        return mixed

    def checkpoint(self, step: int, records: int, wall_time_s: float, stages: dict) -> None:
        """A checkpoint was written at ``step`` after ``records`` metrics records."""
        self.data.update(checkpoint_step=step, records_at_checkpoint=records,
                         wall_time_s=wall_time_s, stage_seconds=stages)
        self.save()

    def stop(self, status: str, **why) -> None:
        """The run stopped early: "diverged" (with why) or "interrupted"."""
        self.data.update(status=status, **why)
        self.save()

    def finish(self, wall_time_s: float, stages: dict) -> None:
        self.data.update(status="finished", wall_time_s=wall_time_s, stage_seconds=stages,
                         finished=datetime.datetime.now().isoformat(timespec="seconds"))
        self.save()


# ------------------------------------------------------------------ reading runs back


@dataclass
class RunRecord:
    """One run directory as found on disk; ``results`` is final.json when finished."""

    path: Path
    method: str
    suite: str
    quality: str
    seed: int | None
    #: finished | running | stopped (said running, nobody holds the lock) | another meta.json
    #: status | incomplete | unreadable
    status: str
    reason: str = ""
    results: dict | None = None
    tasks: list[str] = field(default_factory=list)
    identity: dict | None = None
    #: meta.json "role": role, ablation_of, components and order (the row order key), as
    #: the method was registered when the run was made
    role: dict | None = None
    #: meta.json "default_method_identity": the method part of the identity a plain run of
    #: the method had when this run was made (a row is labelled by how it differs from it)
    default_identity: dict | None = None
    started: str = ""  # meta.json "started" (ISO time)
    #: meta.json "numerics" (machine, threads, library builds; None: made before it was
    #: recorded) and the keys of every numerics it ran under (more than one if resumed
    #: elsewhere)
    numerics: dict | None = None
    numerics_keys: tuple[str, ...] = ("unrecorded",)
    #: meta.json "streams": digests of what the seed fixed (initial weights, batch stream,
    #: initial masks); None for runs made before they were recorded
    streams: dict | None = None

    def label(self) -> str:
        seed = "?" if self.seed is None else self.seed
        return f"{self.method} {self.suite} {self.quality} seed{seed}"


def load_run(path: Path) -> RunRecord:
    """The record of run directory ``path`` (any status)."""
    suite_dir, quality, method = _layout_names(path)
    seed_text = path.name.removeprefix("seed")
    run = RunRecord(path, method, suite_dir, quality,
                    int(seed_text) if seed_text.isdigit() else None, "unreadable")
    try:
        meta = read_json(path / "meta.json")
        run.method = str(meta.get("method", method))
        run.suite = str(meta.get("suite", suite_dir))
        run.quality = str(meta.get("quality", quality))
        run.seed = int(meta.get("seed", run.seed))
        run.tasks = [str(task) for task in meta.get("tasks", [])]
        run.identity = meta.get("identity")
        run.role = meta.get("role")
        run.default_identity = meta.get("default_method_identity")
        run.started = str(meta.get("started") or "")
        run.numerics = meta.get("numerics")
        run.streams = meta.get("streams")
        if run.numerics:
            run.numerics_keys = tuple(meta.get("numerics_mixed") or [run.numerics["key"]])
    except (OSError, ValueError, TypeError, AttributeError) as err:
        run.reason = f"meta.json unreadable ({type(err).__name__})"
        return run
    if meta.get("status") != "finished":
        run.status = str(meta.get("status") or "running")
        if run.status == "running" and lock_holder(path) is None:
            run.status = "stopped"
            run.reason = ("meta.json says running but no process holds its lock: killed or "
                          "crashed; the same command resumes it")
        return run
    if not (path / "final.json").exists():
        run.status, run.reason = "incomplete", "final.json missing"
        return run
    try:
        run.results = read_json(path / "final.json")
    except (OSError, ValueError) as err:
        run.reason = f"final.json unreadable ({type(err).__name__})"
        return run
    run.status = "finished"
    return run


def scan_runs(runs_dir: Path) -> list[RunRecord]:
    """Every run directory under ``runs_dir`` (suite/quality/method/cell/seedN), any status,
    and those of the layout before run identities (suite/quality/method/seedN), which
    can only be listed as left out."""
    def seed_dirs(pattern: str) -> list[Path]:
        return [p for p in sorted(Path(runs_dir).glob(pattern))
                if p.is_dir() and SEED_DIR.fullmatch(p.name)]  # not seed0.bak, seed0-old, ...

    legacy = [RunRecord(p, p.parts[-2], p.parts[-4], p.parts[-3], int(p.name[4:]), "legacy",
                        "a run directory of the layout before run identities; rerun it")
              for p in seed_dirs(LEGACY_PATTERN)]
    return [load_run(p) for p in seed_dirs(RUN_PATTERN)] + legacy


def numerics_summary(record: dict | None) -> str:
    """One line naming a meta.json "numerics" record ("unrecorded" for runs made before
    they were)."""
    if not record:
        return "unrecorded"
    where = record.get("gpu") or record.get("cpu_model")
    forced = "".join(f", {name}={value}" for name, value in
                     sorted((record.get("environment") or {}).items()))
    return (f"{record['key']}: {where}, {record.get('cpu_capability')}, "
            f"{record.get('torch_threads')} threads, torch {record.get('torch')}{forced}")


def histogram_edges(low: int, high: int, per_decade: int) -> list[float]:
    """All bin edges, in score units, of a signed-log10 histogram record with these bounds
    (``mtrl_bench.method.signed_log_histogram``); its counts fill bins ``first, first + 1,
    ...``."""
    magnitudes = [10.0 ** (low + k / per_decade) for k in range((high - low) * per_decade + 1)]
    return [-m for m in reversed(magnitudes)] + magnitudes  # the zero bin sits between
