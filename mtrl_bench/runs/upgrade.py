"""``mtrl-bench upgrade-records``: write into the meta.json of runs made by an older
mtrl-bench what tables now read from the run record alone, taken once from this checkout.

Only missing fields are added, never a recorded value changed: the registration's row
``order`` inside "role" (and the whole "role" where a run has none), and
"default_method_identity" (what a plain run of the method makes, to label its variants).
Each upgraded meta.json lists what was added, by which commit and when, under
"record_upgrades". Runs of methods not registered here, and runs in progress (their runner
rewrites meta.json), are left as they are and listed.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from mtrl_bench.config import default_method_identity
from mtrl_bench.io import atomic_write_json, read_json
from mtrl_bench.method import method_role
from mtrl_bench.provenance import git_commit
from mtrl_bench.runs.rundir import lock_holder, scan_runs


@dataclass
class Upgrade:
    path: Path
    added: list[str]  # fields added (or that would be, with dry_run)
    skipped: str = ""  # why nothing was added, where something was missing


def missing_fields(meta: dict) -> list[str]:
    """The record fields tables read that ``meta`` lacks."""
    missing = []
    role = meta.get("role")
    if not isinstance(role, dict):
        missing.append("role")
    elif "order" not in role:
        missing.append("role.order")
    if "default_method_identity" not in meta:
        missing.append("default_method_identity")
    return missing


def upgrade_records(runs_dir: Path, dry_run: bool = False) -> list[Upgrade]:
    """Add the missing record fields to every run under ``runs_dir`` that lacks any."""
    upgrades, defaults = [], {}
    stamp = {"by": git_commit(),
             "on": datetime.datetime.now().isoformat(timespec="seconds")}
    for run in scan_runs(runs_dir):
        if run.status in ("legacy", "unreadable"):
            continue
        meta = read_json(run.path / "meta.json")
        missing = missing_fields(meta)
        if not missing:
            continue
        role = method_role(run.method)
        if role is None:
            upgrades.append(Upgrade(run.path, [], f"{run.method} is not registered here"))
            continue
        if lock_holder(run.path) is not None:
            upgrades.append(Upgrade(run.path, [], "in progress (its runner rewrites meta.json)"))
            continue
        if "role" in missing:
            meta["role"] = role.as_dict()
        elif "role.order" in missing:
            meta["role"]["order"] = role.order
        if "default_method_identity" in missing:
            if run.method not in defaults:
                defaults[run.method] = default_method_identity(run.method)
            meta["default_method_identity"] = defaults[run.method]
        meta.setdefault("record_upgrades", []).append({**stamp, "added": missing})
        if not dry_run:
            atomic_write_json(run.path / "meta.json", meta)
        upgrades.append(Upgrade(run.path, missing))
    return upgrades
