"""Atomic file writes: a reader never sees a half-written result, checkpoint or table."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


TMP_GLOB = ".*.tmp"  # what atomic_write's temporary files look like
#: ``.<name>.<random>.<pid>.tmp``: the writer's pid tells a leftover from a write in progress
_TMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp$")


def user_cache_dir() -> Path:
    """``~/.cache/mtrl-bench``: the per-user home of datasets, file hashes and goal lists."""
    return Path.home() / ".cache" / "mtrl-bench"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    Durable: the file is fsynced before the rename and the folder after it, so after a
    crash or power loss ``path`` holds the old content or the new, never a torn file. The
    temporary file is removed if anything fails (a write error, Ctrl-C)."""
    path = Path(path)
    if path.is_dir():  # the rename would fail naming the temporary file, not the culprit
        raise IsADirectoryError(errno.EISDIR, "a folder is where a file should go", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are for sharing
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` or its closest ancestor that exists (where a folder would be created)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and write (and remove) a temporary file in it: OSError if it cannot
    take files, found before any work rather than after it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=f".{os.getpid()}.tmp",
                                 dir=folder)
    os.close(fd)
    os.unlink(probe)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temporary_files(folder: Path, *, spare_live_writers: bool = False) -> list[Path]:
    """Delete :func:`atomic_write` leftovers in ``folder``: all of them (call only while no
    other process can be writing there, e.g. under the run directory's lock), or with
    ``spare_live_writers`` only those whose writing process no longer runs (a shared
    dataset folder, where another generator may be writing)."""
    removed = []
    for path in Path(folder).glob(TMP_GLOB):
        match = _TMP_RE.match(path.name)
        if spare_live_writers and (not match or _pid_running(int(match["pid"]))):
            continue
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())
