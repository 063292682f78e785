"""A method is one registered class: defined here, it trains without touching core code."""

import re

import gin
import pytest
import torch

from mtrl_bench import cli
from mtrl_bench.data.generation import ensure_suite_dataset
from mtrl_bench.errors import UserError
from mtrl_bench.method import (
    Method,
    build_method,
    get_method_class,
    register_method,
)
from mtrl_bench.training.model import PromptDTConfig
from mtrl_bench.training.trainer import Trainer


@register_method("test-agreement")
class AgreementMasks(Method):
    """Test method: soft-mask (0.5) every entry where g_i disagrees in sign with the mean."""

    soft_masks = True

    def __init__(self, update_interval: int = 3, soft_value: float = 0.5):
        super().__init__(update_interval)
        self.soft_value = soft_value
        self.updates = 0

    def initial_masks(self, num_tasks, segments, theta, generator):  # uses_masks follows
        return torch.ones(num_tasks, segments[-1].stop, device=theta.device)

    def update_masks(self, ctx):
        assert ctx.task_grads.shape == ctx.masks.shape and ctx.task_losses.shape == (2,)
        disagree = ctx.task_grads * ctx.task_grads.mean(0) < 0
        ctx.masks.copy_(torch.where(disagree, self.soft_value, 1.0))
        self.updates += 1
        return {"disagreeing": disagree.sum(1).tolist()}

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = state["updates"]


@register_method("test-agreement-hard", role="ablation", ablation_of="test-agreement",
                   components="hard")
class HardAgreementMasks(AgreementMasks):
    """Test method: the same with disagreeing entries dropped (0)."""

    def __init__(self, update_interval: int = 3, soft_value: float = 0.0):
        super().__init__(update_interval, soft_value)


@pytest.fixture(autouse=True)
def clean_gin():
    yield
    gin.clear_config()


@pytest.mark.slow
def test_a_mask_method_defined_outside_the_package_trains(tmp_path):
    datasets = ensure_suite_dataset(["reach-v3", "drawer-close-v3"], "near-optimal",
                                    data_dir=tmp_path, episodes=3, episode_length=30,
                                    workers=1, progress=False)
    config = PromptDTConfig(n_layer=1, n_embd=16, n_head=2, n_inner=32, context_len=4,
                            prompt_len=2)
    trainer = Trainer(datasets, "test-agreement", total_steps=7, warmup_steps=1, device="cpu",
                      model_config=config)
    logged = []
    trainer.train(callback=logged.append)
    masks = [m for m in logged if m["kind"] == "mask"]
    assert [m["step"] for m in masks] == [4, 7] and trainer.method.updates == 2
    assert all(0 < d < trainer.model.num_maskable for m in masks for d in m["disagreeing"])
    soft = trainer.masks.values
    assert set(soft.unique().tolist()) == {0.5, 1.0}
    assert masks[-1]["sparsity"] == (soft < 1).float().mean(1).tolist()
    assert torch.isfinite(trainer.last_task_losses).all()

    trainer.save_checkpoint(tmp_path / "ckpt.pt")
    again = Trainer(datasets, "test-agreement", total_steps=7, warmup_steps=1, device="cpu",
                    model_config=config)
    again.load_checkpoint(tmp_path / "ckpt.pt")
    assert again.method.updates == 2 and torch.equal(again.masks.values, soft)


def test_a_method_that_starts_masks_uses_them_without_saying_so():
    assert build_method("test-agreement").uses_masks  # defines initial_masks only
    assert build_method("test-agreement-hard").uses_masks  # and so does its subclass
    assert not build_method("promptdt").uses_masks and not build_method("pcgrad").uses_masks
    assert build_method("random-masks").uses_masks and build_method("socodt").uses_masks


def test_duplicate_name_is_refused_loudly():
    with pytest.raises(ValueError, match="'test-agreement' is already registered by .*Agreement"):
        register_method("test-agreement")(type("Again", (Method,), {}))
    with pytest.raises(ValueError, match="'harmodt-f' is already registered"):
        register_method("harmodt-f")(type("Again", (Method,), {}))


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(UserError,
                       match="unknown method 'nope'; valid: promptdt, mtdt, task-film, harmodt-f"):
        get_method_class("nope")
    with pytest.raises(UserError, match="unknown method 'nope'"):
        Trainer({"reach-v3": None}, "nope", device="cpu")


def test_gin_bindings_are_per_registered_name():
    gin.parse_config("test_agreement.soft_value = 0.25\ntest_agreement.update_interval = 5")
    assert build_method("test-agreement").soft_value == 0.25
    assert build_method("test-agreement").update_interval == 5
    hard = build_method("test-agreement-hard")  # a subclass: not bound by its parent's values
    assert (hard.soft_value, hard.update_interval) == (0.0, 3)
    assert build_method("test-agreement", soft_value=0.75).soft_value == 0.75
    with pytest.raises(ValueError, match="doesn't have a parameter named 'typo'"):
        gin.parse_config("test_agreement.typo = 1")


def test_methods_command_lists_every_registered_method(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("harmodt-f", "harmodt-m", "harmodt-r", "mtdt", "promptdt"):
        assert re.search(f"^{name} +\\S", out, re.M)
    assert re.search(r"^test-agreement +proposed +Test method: soft-mask \(0\.5\) every", out,
                     re.M)
    assert re.search(r"^test-agreement-hard +ablation of test-agreement +Test", out, re.M)
    assert re.search(r"^promptdt +baseline +Prompt-DT", out, re.M)


def test_roles_are_checked_when_registering():
    with pytest.raises(ValueError, match="role must be one of"):
        register_method("test-bad-role", role="winner")
    with pytest.raises(ValueError, match="names the method it is an ablation of"):
        register_method("test-bad-ablation", role="ablation")


def test_a_registered_role_places_the_method_in_the_tables(tmp_path, capsys):
    """No table code names these methods: their registration puts them in table 4."""
    import numpy as np
    import pandas as pd
    from synthetic_runs import FakeRun, identity, write

    from mtrl_bench.identity import cell_id
    from mtrl_bench.runs.rundir import run_dir

    for method in ("promptdt", "test-agreement", "test-agreement-hard"):
        ident = identity(method, "near-optimal")
        for seed in range(2):
            success = np.full(5, 0.2 + 0.1 * seed + 0.3 * (method != "promptdt"))
            path = run_dir(tmp_path, "mt5", "near-optimal", method, cell_id(ident), seed)
            write(tmp_path / "runs", FakeRun(method, "near-optimal", seed, success,
                                             1000 * success, ident, path))
    assert cli.main(["table", "--results-dir", str(tmp_path), "--resamples", "100"]) == 0
    capsys.readouterr()
    table1 = pd.read_csv(tmp_path / "tables" / "table1.csv")
    assert set(table1["row"]) == {"promptdt", "test-agreement"}
    assert set(table1["reference"]) == {"promptdt"}
    table4 = pd.read_csv(tmp_path / "tables" / "table4.csv")
    assert table4["row"].tolist() == ["test-agreement-hard", "test-agreement"]
    assert table4["components"].tolist()[0] == "hard"


@pytest.mark.slow
def test_the_readme_s_method_package_installs_and_runs(tmp_path):
    """README's worked example, as written there: a package of its own whose entry point
    registers MyMasks; installed beside mtrl-bench it is listed and trains a tiny run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Adding a method", 1)[1]
    package = tmp_path / "my-mtrl-method"
    package.mkdir()
    (package / "my_masks.py").write_text(section.split("```python\n", 1)[1].split("```")[0])
    toml = section.split("```toml\n", 1)[1].split("```")[0]
    (package / "pyproject.toml").write_text(toml)
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(package)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-m", "mtrl_bench", "methods"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert re.search(r"^my-masks\s+proposed\s+One line shown", listed.stdout, re.M), \
        listed.stdout + listed.stderr
    run = subprocess.run(
        [sys.executable, "-m", "mtrl_bench", "run", "--method", "my-masks", "--preset", "tiny",
         "--no-progress", "--threads", "1", "--results-dir", str(tmp_path / "results"),
         "--data-dir", str(tmp_path / "data")], env=env, capture_output=True, text=True,
        timeout=600)
    assert run.returncode == 0 and "MEAN" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
