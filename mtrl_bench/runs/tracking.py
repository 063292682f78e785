"""The optional Weights & Biases mirror of a run's metrics.jsonl (the local files stay the
record: wandb only shows them)."""

from __future__ import annotations

import re
from pathlib import Path

from mtrl_bench.errors import UserError


class WandbMirror:
    """Optional mirror of metrics.jsonl to Weights & Biases (local files stay the truth)."""

    def __init__(self, mode: str | None, run_path: Path, name: str, config: dict):
        self.run = None
        if not mode:
            return
        try:
            import wandb
        except ImportError as err:
            raise UserError("--wandb needs wandb: pip install 'mtrl-bench[wandb]'") from err
        self.run = wandb.init(project="mtrl-bench", name=name, dir=str(run_path), mode=mode,
                              config=config, resume="allow",
                              id=re.sub(r"[:;,#?/' ]", "-", name))

    def log(self, record: dict) -> None:
        if self.run is None:
            return
        flat = {}
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                flat[f"{record['kind']}/{key}"] = value
            elif isinstance(value, dict) and key in ("success", "return"):
                flat.update({f"{record['kind']}/{key}/{t}": v for t, v in value.items()})
        self.run.log(flat, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


