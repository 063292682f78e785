"""Methods that combine per-task gradients (PCGrad, CAGrad, and one defined here), checked
against slow explicit references: a loop over tasks with separate backward passes, and the
papers' formulas written out."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mtrl_bench.methods.cagrad import cagrad_direction, cagrad_weights
from mtrl_bench.methods.pcgrad import pcgrad_coefficients
from toolbox import tool_module

from mtrl_bench.data.generation import ensure_suite_dataset
from mtrl_bench.method import (
    GradientContext,
    Method,
    build_method,
    register_method,
    registered_methods,
)
from mtrl_bench.training.model import PromptDTConfig
from mtrl_bench.training.trainer import Trainer, masked_action_loss

TASKS = ["reach-v3", "button-press-v3", "drawer-close-v3"]
TINY = dict(n_layer=2, n_embd=32, n_head=2, n_inner=64, dropout=0.0, context_len=8, prompt_len=3)
REPO = Path(__file__).resolve().parents[1]
record_training = tool_module("record_training")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return ensure_suite_dataset(TASKS, "near-optimal", data_dir=tmp_path_factory.mktemp("d"),
                                episodes=4, episode_length=30, workers=1, progress=False)


def _trainer(datasets, method, **model):
    return Trainer(datasets, method, total_steps=20, batch_size=3, warmup_steps=1,
                   learning_rate=1e-3, device="cpu", seed=3, log_every=1000,
                   model_config=PromptDTConfig(**{**TINY, **model}))


def _loop_gradients(trainer, batch):
    """Reference: one forward and one backward per task, on that task's slice alone."""
    out = []
    for i in range(trainer.num_tasks):
        one = {k: ({kk: vv[i:i + 1] for kk, vv in v.items()} if isinstance(v, dict)
                   else v[i:i + 1]) for k, v in batch.items()}
        trainer.model.zero_grad(set_to_none=True)
        prompt = one.get("prompt")
        pred = trainer.model(one["states"], one["actions"], one["returns_to_go"],
                             one["timesteps"], one["attention_mask"], prompt=prompt,
                             task_ids=one["task_ids"])
        masked_action_loss(pred, one["actions"], one["attention_mask"])[0].backward()
        out.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()
                    if p.grad is not None})
    return out


@pytest.mark.parametrize("method", ["pcgrad", "mtdt-like"])
def test_per_task_gradients_of_one_pass_equal_a_loop_of_backward_passes(datasets, method):
    trainer = _trainer(datasets, "mtdt" if method == "mtdt-like" else method)
    batch = trainer.sampler.sample(with_prompt=trainer.config.conditioning == "prompt")
    losses, grads = trainer.per_task_gradients(batch)
    reference = _loop_gradients(trainer, batch)
    for i, task_grads in enumerate(reference):
        for name, grad in task_grads.items():
            torch.testing.assert_close(grads[name][i], grad, rtol=1e-5, atol=1e-7)
    assert losses.shape == (3,) and torch.isfinite(losses).all()


def _pcgrad_reference(grads: np.ndarray, orders) -> np.ndarray:
    """Yu et al. 2020, Algorithm 1, literally: vectors, in float64."""
    projected = []
    for i, g in enumerate(grads):
        g_pc = g.copy()
        for j in orders[i]:
            dot = g_pc @ grads[j]
            if dot < 0:
                g_pc -= dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g_pc)
    return np.mean(projected, axis=0)


def test_pcgrad_matches_the_paper_algorithm():
    rng = np.random.default_rng(0)
    for n in (2, 3, 6):
        grads = rng.normal(size=(n, 40))
        grads[1] = -0.8 * grads[0] + 0.1 * rng.normal(size=40)  # a strong conflict
        orders = [list(rng.permutation([j for j in range(n) if j != i])) for i in range(n)]
        coefficients = pcgrad_coefficients(grads @ grads.T, orders)
        ours = ((1 - coefficients.sum(0)) / n) @ grads
        np.testing.assert_allclose(ours, _pcgrad_reference(grads, orders), rtol=1e-10)
    # through the method, float32 gradients, its seeded orders
    grads = torch.tensor(rng.normal(size=(4, 30)), dtype=torch.float32)
    generator = torch.Generator().manual_seed(5)
    out = build_method("pcgrad").combine_gradients(GradientContext(0, 10, grads, torch.ones(4),
                                                                   generator))
    keys = torch.rand((4, 3), generator=torch.Generator().manual_seed(5))
    orders = [[[j for j in range(4) if j != i][k] for k in keys[i].argsort().tolist()]
              for i in range(4)]  # the documented draw: a random order of the others
    assert sorted(orders[2]) == [0, 1, 3]
    np.testing.assert_allclose(out.numpy(), _pcgrad_reference(grads.double().numpy(), orders),
                               rtol=1e-5, atol=1e-6)
    # no conflicts: plain mean
    same = torch.ones(3, 5)
    np.testing.assert_allclose(build_method("pcgrad").combine_gradients(
        GradientContext(0, 10, same, torch.ones(3), generator)).numpy(), np.ones(5))


def _cagrad_reference(grads: np.ndarray, c: float) -> np.ndarray:
    """Liu et al. 2021: the dual over the simplex minimised by brute force (golden-section
    search on an edge for 2 tasks, a fine grid refined by exponentiated gradient for 3),
    then d = g0 + c·||g0||/||g_w||·g_w, divided by 1 + c²."""
    n = len(grads)
    gram = grads @ grads.T
    g0 = grads.mean(0)
    radius = c * np.linalg.norm(g0)

    def dual(w):
        g_w = w @ grads
        return g_w @ g0 + radius * np.linalg.norm(g_w)

    if n == 2:
        lo, hi = 0.0, 1.0
        for _ in range(200):
            a, b = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
            if dual(np.array([a, 1 - a])) < dual(np.array([b, 1 - b])):
                hi = b
            else:
                lo = a
        w = np.array([lo, 1 - lo])
    else:
        grid = [np.array([a, b, 1 - a - b]) for a in np.linspace(0, 1, 201)
                for b in np.linspace(0, 1, 201) if a + b <= 1]
        w = min(grid, key=dual)
        for _ in range(20000):  # exponentiated gradient on the simplex
            g_w = w @ grads
            grad = grads @ g0 + radius * (gram @ w) / max(np.linalg.norm(g_w), 1e-300)
            w = w * np.exp(-0.05 * grad / max(np.abs(grad).max(), 1e-300))
            w /= w.sum()
    g_w = w @ grads
    return (g0 + radius / np.linalg.norm(g_w) * g_w) / (1 + c * c)


@pytest.mark.parametrize("n", [2, 3])
def test_cagrad_matches_the_dual_solved_by_brute_force(n):
    rng = np.random.default_rng(n)
    for trial in range(4):
        grads = rng.normal(size=(n, 25)) * 10.0 ** rng.uniform(-6, 0)  # any gradient scale
        if trial % 2:
            grads[1] = -0.7 * grads[0] + 0.2 * grads[1]
        ours = cagrad_direction(torch.tensor(grads), 0.4)[0].numpy()
        np.testing.assert_allclose(ours, _cagrad_reference(grads, 0.4), rtol=2e-5,
                                   atol=1e-9 * np.abs(grads).max())


def test_cagrad_edge_cases():
    np.testing.assert_allclose(cagrad_weights(np.zeros((3, 3)), 0.4)[0], np.full(3, 1 / 3))
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # mean gradient 0: no step
    assert torch.equal(cagrad_direction(opposite, 0.4)[0], torch.zeros(2))
    aligned = torch.tensor([[1.0, 2.0], [1.0, 2.0]])  # c = 0: the mean
    np.testing.assert_allclose(cagrad_direction(aligned, 0.0)[0].numpy(), [1.0, 2.0])
    with_zero = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]])  # a task without gradient
    direction, gap = cagrad_direction(with_zero, 0.4)
    assert torch.isfinite(direction).all()
    assert gap < 1e-6  # solved: the zero task's g_i·d = 0 is no gap (no spurious warning)


@pytest.mark.parametrize("decades", [0, 2, 4])
def test_cagrad_is_optimal_for_fifty_tasks_of_very_different_gradient_scales(decades):
    """Strong duality certifies the solve: the dual value F(w) must equal the worst task's
    improvement min_i g_i·d along the direction it gives (computed here in float64 from the
    gradients themselves, not the Gram matrix)."""
    rng = np.random.default_rng(decades)
    grads = rng.normal(size=(50, 300)) * 10.0 ** rng.uniform(-decades, 0, size=(50, 1))
    grads[:10] -= 0.8 * grads[10:20]  # conflicts
    w, _ = cagrad_weights(grads @ grads.T, 0.4)
    g0, g_w = grads.mean(0), w @ grads
    radius = 0.4 * np.linalg.norm(g0)
    dual = g_w @ g0 + radius * np.linalg.norm(g_w)
    d = g0 + radius / np.linalg.norm(g_w) * g_w
    gap = dual - (grads @ d).min()
    scale = np.linalg.norm(g0) * np.linalg.norm(grads, axis=1).max()
    assert -1e-9 <= gap / scale < 1e-6 and abs(w.sum() - 1) < 1e-9 and (w >= 0).all()


@pytest.mark.parametrize("method", ["pcgrad", "cagrad"])
def test_a_step_follows_the_combined_gradient(datasets, method):
    """The trainer writes the method's direction into .grad, clips and steps: equal to doing
    it by hand from per-task backward passes."""
    trainer = _trainer(datasets, method)
    twin = _trainer(datasets, method)
    twin.model.load_state_dict(trainer.model.state_dict())
    batch = trainer.sampler.sample()
    reference = _loop_gradients(twin, batch)
    names = [n for n, _ in twin.model.named_parameters()]
    flat = torch.stack([torch.cat([r[n].reshape(-1) for n in names]) for r in reference])
    generator = torch.Generator().manual_seed(5)
    combined = twin.method.combine_gradients(GradientContext(0, 20, flat, torch.ones(3),
                                                             generator))
    offset = 0
    for _, p in twin.model.named_parameters():
        p.grad = combined[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    torch.nn.utils.clip_grad_norm_(twin.model.parameters(), 0.25)
    twin.optimizer.step()

    trainer.method_generator.manual_seed(5)
    trainer.sampler.sample = lambda **_: batch
    trainer.train_step()
    for (name, a), (_, b) in zip(trainer.model.named_parameters(),
                                 twin.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@register_method("test-sign-vote", role="baseline")
class SignVote(Method):
    """Test method: step only on the coordinates where most tasks agree in sign."""

    combines_gradients = True

    def __init__(self, update_interval: int = 0, quorum: float = 0.5):
        super().__init__(update_interval)
        self.quorum = quorum
        self.calls = 0

    def combine_gradients(self, ctx):
        self.calls += 1
        agree = (torch.sign(ctx.task_grads) == torch.sign(ctx.task_grads.mean(0))).float()
        return ctx.task_grads.mean(0) * (agree.mean(0) > self.quorum)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


class MaskedSurgery(SignVote):
    """Test method with masks too: per-task gradients then come from a loop of backward
    passes over one forward graph."""

    soft_masks = True

    @property
    def uses_masks(self):
        return True

    def initial_masks(self, num_tasks, segments, theta, generator):
        masks = torch.ones(num_tasks, segments[-1].stop)
        masks[0, ::3] = 0.5  # soft: absent from task 0's forward, half its update
        return masks

    def update_masks(self, ctx):
        self.seen = ctx.task_grads.clone()
        return {}


register_method("test-masked-surgery")(MaskedSurgery)


def test_a_gradient_method_defined_here_trains_and_resumes(datasets, tmp_path):
    trainer = _trainer(datasets, "test-sign-vote")
    trainer.train(6)
    assert trainer.method.calls == 6 and torch.isfinite(trainer.last_task_losses).all()
    trainer.save_checkpoint(tmp_path / "c.pt")
    again = _trainer(datasets, "test-sign-vote")
    again.load_checkpoint(tmp_path / "c.pt")
    assert again.method.calls == 6


def test_masks_and_gradient_combination_together(datasets):
    """Per-task gradients through the masks (a loop of backward passes) equal separate
    masked passes, and the mask capture equals a single backward's."""
    trainer = _trainer(datasets, build_method("test-masked-surgery", update_interval=2))
    batch = trainer.sampler.sample()
    losses, grads = trainer.per_task_gradients(batch, capture=True)
    captured = trainer.masks.capture.clone()
    trainer.masks.stop_capture()
    trainer.loss_and_backward(batch, capture=True)
    torch.testing.assert_close(captured, trainer.masks.capture, rtol=1e-5, atol=1e-8)
    trainer.masks.stop_capture()
    summed = {n: g.mean(0) for n, g in grads.items()}
    for name, p in trainer.model.named_parameters():  # the mean of per-task θ-gradients
        torch.testing.assert_close(summed[name], p.grad, rtol=1e-5, atol=1e-8, msg=name)
    trainer.train(4)
    assert trainer.method.calls == 4 and trainer.method.seen.shape == trainer.masks.values.shape


RECORDINGS = sorted((Path(__file__).parent / "data").glob("training_reference-*.json"))


@pytest.mark.slow
def test_existing_methods_train_as_recorded_exactly_or_within_machine_noise():
    """Every committed recording of 12 training steps of each built-in method
    (tools/record_training.py): bit for bit against the one made under this machine's
    numerics, within LOSS_RTOL of every loss against those made elsewhere. The modes it ran
    in are printed (pytest -rP shows them) and named in any failure."""
    current = json.loads(subprocess.run(
        [sys.executable, str(REPO / "tools" / "record_training.py"), "-"],
        capture_output=True, text=True, check=True, timeout=600).stdout)
    modes = {}
    for path in RECORDINGS:
        mode, problems = record_training.compare(json.loads(path.read_text()), current)
        modes[path.name] = mode
        print(f"training recording {path.name}: compared {mode}")
        assert not problems, f"{path.name} ({mode}): {'; '.join(problems)}"
    assert "tolerance" in modes.values() or len(RECORDINGS) == 1, modes


@pytest.mark.slow
@pytest.mark.parametrize("plant", ["loss normalisation", "dropout draws"])
def test_the_cross_machine_tolerance_catches_a_real_change_of_training(monkeypatch, plant):
    """Compared as if recorded on another machine (tolerance mode), a planted change of
    training numerics still fails: the loss normalised over one count more, or one extra
    random draw before each step (every dropout mask moves)."""
    from mtrl_bench.training import trainer as trainer_module

    if plant == "loss normalisation":
        original = trainer_module.masked_action_loss

        def loss(pred, target, valid):
            count = valid.sum(dim=(1, 2)) * target.shape[-1]
            return original(pred, target, valid) * count / (count + 1)

        monkeypatch.setattr(trainer_module, "masked_action_loss", loss)
    else:
        step = trainer_module.Trainer.train_step

        def shifted(self):
            torch.rand(1)
            return step(self)

        monkeypatch.setattr(trainer_module.Trainer, "train_step", shifted)
    methods = ("promptdt", "socodt")
    recorded = json.loads(RECORDINGS[0].read_text())
    elsewhere = {**recorded, "numerics": {"cpu_model": "another machine"},
                 "methods": {name: recorded["methods"][name] for name in methods}}
    mode, problems = record_training.compare(elsewhere, record_training.record(methods))
    assert mode == "tolerance"
    assert [p.split(":")[0] for p in problems] == list(methods), problems
    # and unplanted, the same comparison passes (the planted change is what it caught)
    monkeypatch.undo()
    assert record_training.compare(elsewhere, record_training.record(methods)) == (
        "tolerance", [])


@pytest.mark.slow
def test_importing_a_method_module_by_its_repository_path_is_harmless():
    code = ("import methods.socodt, methods.pcgrad\n"
            "from mtrl_bench.method import registered_methods, get_method_class\n"
            "assert 'socodt' in registered_methods()\n"
            "assert get_method_class('socodt').__module__ == 'mtrl_bench.methods.socodt'\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-1500:]
    with pytest.raises(ValueError, match="'pcgrad' is already registered"):
        register_method("pcgrad")(type("Other", (Method,), {}))


def test_gradient_methods_are_listed_with_their_parameters(capsys):
    from mtrl_bench.cli import main

    assert main(["methods", "--params"]) == 0
    out = capsys.readouterr().out
    assert "pcgrad" in out and "cagrad" in out and "cagrad.c = 0.4" in out
    # inherited parameters are listed too
    assert "socodt_fixed.alpha = 20.0" in out and "socodt_fixed.swap_count = 100" in out
    assert registered_methods()["pcgrad"].combines_gradients


def test_memory_of_per_task_gradients_is_stated():
    """MT50 with the paper model: 50 x 5.29M float32 gradients = 1.06 GB a step."""
    config = PromptDTConfig()
    from mtrl_bench.training.model import DecisionTransformer

    params = sum(p.numel() for p in DecisionTransformer(config).parameters())
    assert math.isclose(50 * params * 4 / 1e9, 1.06, abs_tol=0.01)


def test_per_task_gradients_under_bf16_autocast_with_dropout(datasets):
    """The GPU setting (bf16 autocast, dropout 0.1), here with CPU autocast: the vectorised
    pass must run (the fused attention kernel has no vmap rule there) and stay close to a
    float32 loop of backward passes (dropout off for the comparison)."""
    trainer = _trainer(datasets, "pcgrad", dropout=0.1)
    trainer.autocast = True  # bf16 autocast on this CPU, as on CUDA
    batch = trainer.sampler.sample()
    losses, grads = trainer.per_task_gradients(batch)
    assert torch.isfinite(losses).all() and all(torch.isfinite(g).all() for g in grads.values())
    trainer.model.eval()  # no dropout: compare with the float32 reference
    _, grads = trainer.per_task_gradients(batch)
    trainer.autocast = False
    reference = _loop_gradients(trainer, batch)
    name = "blocks.0.mlp_fc.weight"
    for i, task_grads in enumerate(reference):
        cosine = torch.nn.functional.cosine_similarity(grads[name][i].flatten(),
                                                       task_grads[name].flatten(), dim=0)
        assert cosine > 0.99, (i, float(cosine))


def test_a_wrong_gradient_hook_is_one_line(datasets):
    from mtrl_bench.errors import UserError

    class Wrong(Method):
        combines_gradients = True

        def combine_gradients(self, ctx):
            return torch.zeros(3)

    wrong = Wrong()
    wrong.name = "wrong"
    trainer = _trainer(datasets, wrong)
    with pytest.raises(UserError, match=r"wrong.combine_gradients returned shape \(3,\)"):
        trainer.train_step()
