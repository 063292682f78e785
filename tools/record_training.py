"""Record a few training steps of every built-in method, to check refactors bit for bit.

    python tools/record_training.py tests/data/training_reference-AVX2.json   # (re-)record
    python tools/record_training.py -                                          # print
    python tools/record_training.py --check tests/data/training_reference-*.json

Each method trains 12 steps on a tiny real dataset (2 tasks x 6 episodes x 40 steps, one
torch thread, dropout on, masks updated every 3 steps); the file holds every step's task
losses (float hex) and hashes of the final parameters and masks, with the machine numerics
they were made under (``mtrl_bench.provenance.numerics``: CPU, SIMD level, threads, torch
and BLAS builds). ``--check`` compares the code as it is with recordings: **exact** (every
loss, parameter and mask bit) against a recording made under the machine's own numerics,
and within :data:`LOSS_RTOL` of every loss against the others (another CPU rounds
differently, and 12 steps let that grow only so far). `tests/test_gradient_methods.py`
runs both. Record one file per machine numerics; re-record only when a change is meant to
alter training, and say so.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile

import torch

from mtrl_bench.data.generation import ensure_suite_dataset
from mtrl_bench.method import build_method, registered_methods
from mtrl_bench.provenance import NUMERICS_KEY_FIELDS, numerics
from mtrl_bench.training.model import PromptDTConfig
from mtrl_bench.training.trainer import Trainer

TASKS = ["reach-v3", "button-press-v3"]
TINY = dict(n_layer=2, n_embd=32, n_head=2, n_inner=64, dropout=0.1, context_len=8,
            prompt_len=3)
#: the methods the committed recording covers (those that existed when it was made)
RECORDED = ("promptdt", "mtdt", "harmodt-f", "harmodt-m", "harmodt-r", "socodt",
            "socodt-hard", "socodt-nomag", "socodt-fixed")


#: the largest relative difference of a recorded loss allowed between machines of different
#: numerics: measured 1.7e-7 between an AVX512 and an AVX2 CPU (12 steps, every method),
#: so ten times that; tests/test_gradient_methods.py plants real changes of training
#: numerics (the loss normalisation, the dropout draws) and checks they exceed it
LOSS_RTOL = 2e-6


def record(methods=RECORDED) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _record(methods)
    finally:
        torch.set_num_threads(threads)


def _record(methods) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        data = ensure_suite_dataset(TASKS, "near-optimal", data_dir=folder, episodes=6,
                                    episode_length=40, workers=1, progress=False)
    made_under = numerics(torch.device("cpu"))
    out = {"torch": torch.__version__, "cpu_capability": made_under["cpu_capability"],
           "numerics": {name: made_under[name] for name in NUMERICS_KEY_FIELDS},
           "methods": {}}
    for name in (n for n in registered_methods() if n in methods):
        extra = {"k_max": 500} if name.startswith("harmodt") else {}
        trainer = Trainer(data, build_method(name, update_interval=3, **extra), total_steps=12,
                          batch_size=4, warmup_steps=3, learning_rate=1e-3, device="cpu",
                          seed=7, model_config=PromptDTConfig(**TINY))
        losses = []
        for _ in range(12):
            trainer.train_step()
            losses.append([float(x).hex() for x in trainer.last_task_losses.tolist()])
        digest = hashlib.sha256()
        for value in trainer.model.state_dict().values():
            digest.update(value.detach().contiguous().numpy().tobytes())
        masks = None if trainer.masks is None else hashlib.sha256(
            trainer.masks.values.numpy().tobytes()).hexdigest()
        out["methods"][name] = {"losses": losses, "parameters": digest.hexdigest(),
                                "masks": masks}
    return out


def recorded_numerics(recorded: dict) -> dict:
    """The numerics a recording was made under (the first one holds only the torch version
    and the SIMD level)."""
    return recorded.get("numerics") or {name: recorded[name]
                                        for name in ("torch", "cpu_capability")}


def same_numerics(recorded: dict, current: dict) -> bool:
    """Whether a recording was made under the numerics ``current`` was: every field it
    records agrees."""
    return all(current["numerics"].get(name) == value
               for name, value in recorded_numerics(recorded).items())


def compare(recorded: dict, current: dict) -> tuple[str, list[str]]:
    """("exact" or "tolerance", the methods whose training no longer matches, with why)."""
    exact = same_numerics(recorded, current)
    problems = []
    for name, before in recorded["methods"].items():
        after = current["methods"].get(name)
        if after is None:
            problems.append(f"{name}: not recorded now")
        elif exact:
            if after != before:
                changed = [key for key in before if after.get(key) != before[key]]
                problems.append(f"{name}: {', '.join(changed)} differ bit for bit")
        else:
            ours = [[float.fromhex(x) for x in row] for row in after["losses"]]
            theirs = [[float.fromhex(x) for x in row] for row in before["losses"]]
            worst = max(abs(a - b) / abs(b) for row_a, row_b in zip(ours, theirs)
                        for a, b in zip(row_a, row_b))
            if worst > LOSS_RTOL:
                problems.append(f"{name}: losses differ by up to {worst:.2g} relative "
                                f"(> {LOSS_RTOL:g})")
    return ("exact" if exact else "tolerance"), problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "--check":
        current = record()
        failed = False
        for path in argv[1:]:
            with open(path) as handle:
                recorded = json.load(handle)
            mode, problems = compare(recorded, current)
            made_under = ", ".join(f"{name}={value}" for name, value
                                   in recorded_numerics(recorded).items() if value is not None)
            print(f"{path}: {mode} (recorded under {made_under}): "
                  + ("matches" if not problems else "; ".join(problems)))
            failed |= bool(problems)
        return 1 if failed else 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    text = json.dumps(record(), indent=1)
    if argv[0] == "-":
        print(text)
    else:
        with open(argv[0], "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
