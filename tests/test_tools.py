"""The benchmark and cross-check scripts in tools/ run end to end at toy sizes.

Their figures are not checked here (speed goals are for the benchmarks themselves, on the
target machine); this keeps the scripts from rotting as the code under them changes.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def run_tool(name: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env_args = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 300}
    return subprocess.run([sys.executable, str(TOOLS / name), *args], **env_args)


@pytest.mark.slow
@pytest.mark.parametrize("name, args, expected", [
    ("bench_train.py", ["--preset", "tiny", "--tasks", "2", "--device", "cpu", "--steps", "2",
                        "--warmup", "1", "--reference-iterations", "4", "--update-repeats", "1",
                        "--episodes", "2"],
     ["batched, HarmoDT-F masks", "reference loop", "SoCo-DT TAMU mask update"]),
    ("bench_masks.py", ["--model", "tiny", "--tasks", "2", "--device", "cpu", "--repeats", "1",
                        "--warmup", "0"],
     ["socodt-fixed", "harmodt-f", "median_ms"]),
    ("bench_eval.py", ["--tasks", "1", "--goals", "2", "--max-steps", "10", "--workers", "1",
                       "--n-layer", "1", "--n-embd", "16", "--n-head", "1", "--n-inner", "32",
                       "--repeat", "1", "--no-async"],
     ["evaluator + policy", "naive sequential batch-1", "evaluator / naive batch-1"]),
    ("crosscheck_eval.py", ["--tasks", "reach-v3", "--goals", "2", "--max-steps", "40",
                            "--episodes", "4", "--train-steps", "4", "--workers", "1"],
     ["scripted expert", "ALL AGREE"]),
])
def test_tool_runs(tmp_path, name, args, expected):
    result = run_tool(name, *args, tmp_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for text in expected:
        assert text in result.stdout, output[-3000:]
    assert "Traceback" not in output and "Path not found" not in output


@pytest.mark.slow
def test_datagen_benchmark_runs(tmp_path):
    """--goal 0: a busy test machine may miss the speed goal; the script must still work."""
    result = run_tool("bench_datagen.py", "--suite", "random-1:0", "--episodes", "2",
                      "--episode-length", "20", "--workers", "1", "--goal", "0",
                      tmp_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "generator / raw same work" in result.stdout, output[-3000:]


def _tool_module(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_iteration_updates_only_the_task_s_active_entries():
    """The reference loop bench_train.py compares with trains one task on its own masks."""
    from mtrl_bench.method import build_method
    from mtrl_bench.training.model import PromptDTConfig
    from mtrl_bench.training.trainer import Trainer

    bench = _tool_module("bench_train")
    config = PromptDTConfig(n_layer=1, n_head=1, n_embd=16, n_inner=32, dropout=0.0,
                            context_len=5, prompt_len=2)
    trainer = Trainer(bench.synthetic_datasets(2, 3, length=20), build_method("harmodt-f"),
                      device="cpu", model_config=config, batch_size=2, warmup_steps=1)
    before = trainer.model.maskable_flat()
    embedding = trainer.model.embed_state.weight.detach().clone()
    loss = bench.reference_iteration(trainer, 0)
    after = trainer.model.maskable_flat()
    active = trainer.masks.soft[0] == 1
    assert isinstance(loss, float)
    assert torch.equal(after[~active], before[~active])
    assert (after[active] != before[active]).float().mean() > 0.5
    assert not torch.equal(trainer.model.embed_state.weight, embedding)
