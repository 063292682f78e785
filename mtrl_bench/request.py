"""What ``mtrl-bench run`` asks for, as typed values: one request makes one plan
(:mod:`mtrl_bench.plan`) and is one command line (a sweep runs each as its own process)."""

from __future__ import annotations

from dataclasses import dataclass

from mtrl_bench.plan import RunPlan, plan_run


@dataclass(frozen=True)
class RunRequest:
    """One ``mtrl-bench run``: what to run (method, preset, gin files and bindings, the
    ``Run`` values that override the preset's, device, results folder) and how to carry it
    out (data folder, force, regenerate, wandb, progress bars: never part of its identity)."""

    method: str
    preset: str = "paper"
    gin_files: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()
    suite: str | None = None
    quality: str | None = None
    seed: int | None = None
    data: str | None = None
    device: str = "auto"
    threads: int | None = None  # torch threads and evaluation workers (default: torch's)
    results_dir: str | None = None
    data_dir: str | None = None
    force: bool = False
    overwrite_committed: bool = False
    regenerate_data: bool = False
    wandb: str | None = None
    progress: bool = True

    def overrides(self) -> dict:
        """The ``Run`` fields given directly (they override the preset's values)."""
        return {name: getattr(self, name) for name in ("suite", "quality", "seed", "data")
                if getattr(self, name) is not None}

    def plan(self) -> RunPlan:
        return plan_run(self.method, self.preset, self.gin_files, self.bindings,
                        self.results_dir, self.device, self.overrides())

    def command_args(self) -> list[str]:
        """The arguments of ``mtrl-bench run`` that make this request (a sweep runs each
        run as a process of its own; tests check the CLI parses them back to ``self``)."""
        args = ["--method", self.method, "--preset", self.preset]
        for name in ("suite", "quality", "seed", "data"):
            if getattr(self, name) is not None:
                args += [f"--{name}", str(getattr(self, name))]
        args += [arg for path in self.gin_files for arg in ("--gin-file", path)]
        args += [arg for binding in self.bindings for arg in ("--gin-binding", binding)]
        args += ["--device", self.device]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        for flag, value in (("--results-dir", self.results_dir),
                            ("--data-dir", self.data_dir), ("--wandb", self.wandb)):
            if value is not None:
                args += [flag, str(value)]
        switches = (("--force", self.force), ("--overwrite-committed", self.overwrite_committed),
                    ("--regenerate-data", self.regenerate_data),
                    ("--no-progress", not self.progress))
        return args + [flag for flag, on in switches if on]
