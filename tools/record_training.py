"""Record a few training steps of every built-in method, to check refactors bit for bit.

    python tools/record_training.py tests/data/training_reference.json   # re-record
    python tools/record_training.py -                                     # print (the test)

Each method trains 12 steps on a tiny real dataset (2 tasks x 6 episodes x 40 steps, one
torch thread, dropout on, masks updated every 3 steps); the file holds every step's task
losses (float hex) and hashes of the final parameters and masks, with the torch version
and CPU capability they were made with (float results may differ on another CPU).
`tests/test_gradient_methods.py` compares a fresh recording with the committed one.
Re-record only when a change is meant to alter training.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile

import torch

from mtrl_bench.data.generation import ensure_suite_dataset
from mtrl_bench.method import build_method, registered_methods
from mtrl_bench.training.model import PromptDTConfig
from mtrl_bench.training.trainer import Trainer

TASKS = ["reach-v3", "button-press-v3"]
TINY = dict(n_layer=2, n_embd=32, n_head=2, n_inner=64, dropout=0.1, context_len=8,
            prompt_len=3)
#: the methods the committed recording covers (those that existed when it was made)
RECORDED = ("promptdt", "mtdt", "harmodt-f", "harmodt-m", "harmodt-r", "socodt",
            "socodt-hard", "socodt-nomag", "socodt-fixed")


def record() -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        data = ensure_suite_dataset(TASKS, "near-optimal", data_dir=folder, episodes=6,
                                    episode_length=40, workers=1, progress=False)
    out = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "methods": {}}
    for name in (n for n in registered_methods() if n in RECORDED):
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
            trainer.masks.soft.numpy().tobytes()).hexdigest()
        out["methods"][name] = {"losses": losses, "parameters": digest.hexdigest(),
                                "masks": masks}
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
