"""Helpers the tests share: the scripts of tools/ as modules, for tests that call their
functions (they are not part of the installed package), and a child process that Ctrl-C
reaches."""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"

#: seconds a test waits for a child run before calling it hung: a guard, not a speed check
#: (a tiny run takes well under a minute alone, but several times that beside a sweep)
HANG_GUARD_S = 600


def tool_module(name: str):
    """``tools/<name>.py`` imported once under ``name``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def default_sigint() -> None:
    """``preexec_fn`` for a child a test sends SIGINT: a shell starts a background job with
    SIGINT ignored and Python keeps that, so under ``pytest &`` or ``nohup`` the child would
    never see the Ctrl-C the test is about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
