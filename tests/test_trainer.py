"""The batched trainer: sampling, masked gradients, learning, checkpoints, devices."""

import copy

import numpy as np
import pytest
import torch

from mtrl_bench.data.generation import ensure_suite_dataset
from mtrl_bench.errors import UserError
from mtrl_bench.method import build_method, registered_methods
from mtrl_bench.training.model import PromptDTConfig
from mtrl_bench.training.prompts import demonstration_indices, returns_to_go, state_normalizer
from mtrl_bench.training.sampling import ACTION_PAD, RTG_SCALE, TaskBatchSampler
from mtrl_bench.training.trainer import Trainer, resolve_device

TASKS = ["reach-v3", "button-press-v3"]
TINY = dict(n_layer=2, n_embd=32, n_head=2, n_inner=64, dropout=0.0, context_len=8, prompt_len=3)
BUILT_IN = [name for name, cls in registered_methods().items()
            if cls.__module__.startswith("mtrl_bench.methods.")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Real Meta-World episodes, tiny: 2 tasks x 6 episodes x 40 steps."""
    return ensure_suite_dataset(TASKS, "near-optimal", data_dir=tmp_path_factory.mktemp("data"),
                                episodes=6, episode_length=40, workers=1, progress=False)


def _trainer(datasets, method, **kwargs):
    config = PromptDTConfig(**{**TINY, **kwargs.pop("model", {})})
    return Trainer(datasets, method, device="cpu", model_config=config, **kwargs)


def _find_episode(states, reference):
    """The one episode whose (normalised) states at the given steps equal ``states``."""
    found = [e for e in range(reference.shape[0]) if np.allclose(reference[e], states)]
    assert len(found) == 1
    return found[0]


def test_sampled_segments_are_real_left_padded_windows(datasets):
    k, kp, b = 8, 3, 64
    sampler = TaskBatchSampler([datasets[t] for t in TASKS], k, kp, b, seed=3)
    batch = {key: value if key == "prompt" else value.numpy()
             for key, value in sampler.sample().items()}
    prompt = {key: value.numpy() for key, value in batch["prompt"].items()}
    assert batch["states"].shape == (2, b, k, 39) and prompt["states"].shape == (2, b, kp, 39)
    assert batch["task_ids"].tolist() == [0, 1]
    padded = 0
    for i, task in enumerate(TASKS):
        ds = datasets[task]
        mean, std = state_normalizer(ds.observations)
        norm = (ds.observations - mean) / std
        rtg = returns_to_go(ds.rewards) * RTG_SCALE
        demos = set(demonstration_indices(ds.returns, ds.episode_success).tolist())
        used_demos = set()
        for j in range(b):
            valid = batch["attention_mask"][i, j].astype(bool)
            real = int(valid.sum())
            assert real >= 1 and valid[k - real:].all()  # padding on the left only
            t = batch["timesteps"][i, j, k - real:]
            assert (np.diff(t) == 1).all() and t[-1] < ds.episode_length
            assert real == k or t[-1] == ds.episode_length - 1  # short only at the episode end
            e = _find_episode(batch["states"][i, j, k - real:], norm[:, t])
            np.testing.assert_allclose(batch["actions"][i, j, k - real:], ds.actions[e, t])
            np.testing.assert_allclose(batch["returns_to_go"][i, j, k - real:, 0], rtg[e, t],
                                       rtol=1e-6)
            pad = slice(0, k - real)
            assert (batch["states"][i, j, pad] == 0).all()
            assert (batch["actions"][i, j, pad] == ACTION_PAD).all()
            assert (batch["timesteps"][i, j, pad] == 0).all()
            padded += real < k
            # prompt: a whole K'-step window of one of the task's demonstrations
            assert prompt["attention_mask"][i, j].all()
            tp = prompt["timesteps"][i, j]
            assert (np.diff(tp) == 1).all() and tp[-1] < ds.episode_length
            ep = _find_episode(prompt["states"][i, j], norm[:, tp])
            np.testing.assert_allclose(prompt["actions"][i, j], ds.actions[ep, tp])
            used_demos.add(ep)
        assert used_demos <= demos and len(used_demos) > 1
    assert padded > 0  # starts near the episode end do occur


def test_sampler_is_seeded(datasets):
    def draw(seed):
        return TaskBatchSampler([datasets[t] for t in TASKS], 8, 3, 4, seed=seed).sample()

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a["states"], b["states"]) and torch.equal(a["timesteps"], b["timesteps"])
    assert not torch.equal(a["timesteps"], c["timesteps"])


def test_batched_step_gradients_equal_per_task_loop(datasets):
    """theta.grad == (1/N) sum_i dL_i/dW_i * M_i (soft masks), checked task by task."""
    trainer = _trainer(datasets, "socodt")  # a method with soft masks
    model, masks = trainer.model, trainer.masks
    gen = torch.Generator().manual_seed(0)
    soft = torch.rand(masks.values.shape, generator=gen)
    soft[soft > 0.3] = 1.0  # ~70% active, the rest soft values in (0, 0.3]
    masks.values.copy_(soft)
    masks.refresh()
    batch = trainer.sampler.sample()
    losses = trainer.loss_and_backward(batch, capture=True)
    captured = masks.capture
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    n = len(TASKS)
    segments = dict(zip((name for name, _ in model.maskable_parameters()), model.mask_segments))
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(n):
        copy_i = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in copy_i.maskable_parameters():
                seg = segments[name]
                param.mul_(masks.binary[i, seg.offset:seg.stop].view(seg.shape))
        rows = {key: v[i:i + 1] for key, v in batch.items() if key not in ("prompt", "task_ids")}
        pred = copy_i(**rows, prompt={key: v[i:i + 1] for key, v in batch["prompt"].items()})
        valid = rows["attention_mask"][0]
        loss = (((pred[0] - rows["actions"][0]) ** 2).sum(-1) * valid).sum() / (4 * valid.sum())
        torch.testing.assert_close(loss, losses[i])
        copy_i.zero_grad()
        loss.backward()
        for name, param in copy_i.named_parameters():
            if name in segments:  # gradient w.r.t. task i's effective weights, scaled by M_i
                seg = segments[name]
                torch.testing.assert_close(captured[i, seg.offset:seg.stop].view(seg.shape),
                                           param.grad, rtol=1e-4, atol=1e-7)
                expected[name] += param.grad * soft[i, seg.offset:seg.stop].view(seg.shape) / n
            else:
                expected[name] += param.grad / n
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-7)


def test_masks_are_soft_only_for_methods_that_declare_soft_masks(datasets):
    """Binary masks (HarmoDT) share one bf16 tensor for forward and backward on the GPU."""
    assert _trainer(datasets, "socodt").masks.soft_values
    assert not _trainer(datasets, "harmodt-f").masks.soft_values


def test_bf16_masked_path_matches_float32(datasets):
    """The CUDA path (bf16 autocast, masks cached in bf16), run here under CPU autocast."""
    trainer = _trainer(datasets, "socodt")
    soft = torch.rand(trainer.masks.values.shape, generator=torch.Generator().manual_seed(1))
    soft[soft > 0.3] = 1.0
    trainer.masks.values.copy_(soft)
    trainer.masks.refresh()
    batch = trainer.sampler.sample()

    def run():
        losses = trainer.loss_and_backward(batch, capture=True)
        grad = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
        return losses, grad, trainer.masks.capture

    losses32, grad32, captured32 = run()
    trainer.autocast = True
    trainer.masks.compute_dtype = torch.bfloat16  # what Trainer(autocast) builds
    trainer.masks.refresh()
    assert trainer.masks.binary.dtype == trainer.masks.grad_scale.dtype == torch.bfloat16
    losses16, grad16, captured16 = run()
    assert captured16.dtype == torch.float32 and grad16.dtype == torch.float32
    torch.testing.assert_close(losses16, losses32, rtol=2e-2, atol=1e-3)
    cos = torch.nn.functional.cosine_similarity
    assert cos(grad16, grad32, dim=0) > 0.999
    assert cos(captured16.flatten(), captured32.flatten(), dim=0) > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("method", BUILT_IN)
def test_tiny_model_overfits_tiny_dataset(datasets, method):
    trainer = _trainer(datasets, build_method(method, update_interval=25), total_steps=200,
                       warmup_steps=10, batch_size=16, learning_rate=3e-3, log_every=50,
                       model=dict(n_embd=64, n_inner=128))
    trainer.train(1)
    first = trainer.last_task_losses.mean().item()
    logged = []
    trainer.train(callback=logged.append)
    train = [m for m in logged if m["kind"] == "train"]
    assert [m["step"] for m in train] == [50, 100, 150, 200]
    # measured 7.9x (rlw, whose random loss weights slow it most) to 14x, and rlw's 8.2x on
    # an AVX2 CPU was 7.85x on an AVX512 one: the bound leaves room for another CPU's
    # rounding; a method that does not learn stays near 1x
    assert train[-1]["loss"] < first / 6, (first, [m["loss"] for m in train])
    if trainer.masks is not None:
        # updates at steps 25, 50, ...; records carry the steps completed (26, 51, ...)
        assert [m["step"] for m in logged if m["kind"] == "mask"] == list(range(26, 201, 25))


def test_checkpoint_round_trip_continues_bit_for_bit(datasets, tmp_path):
    def make():
        return _trainer(datasets, build_method("harmodt-f", update_interval=2, k_max=500),
                        total_steps=10,
                        warmup_steps=3, model=dict(dropout=0.1))

    first = make()
    first.train(5)
    path = tmp_path / "checkpoint.pt"
    first.save_checkpoint(path)
    masks_at_save = first.masks.values.clone()
    first.train(10)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left

    resumed = make()
    resumed.load_checkpoint(path)
    assert resumed.step == 5 and torch.equal(resumed.masks.values, masks_at_save)
    resumed.train(10)
    assert not torch.equal(resumed.masks.values, masks_at_save)  # updates happened after resume
    assert torch.equal(resumed.masks.values, first.masks.values)
    for (name, a), b in zip(first.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(resumed.last_task_losses, first.last_task_losses)
    assert resumed.scheduler.get_last_lr() == first.scheduler.get_last_lr()

    other = _trainer(datasets, "promptdt", total_steps=10)
    with pytest.raises(UserError, match="method='harmodt-f'"):
        other.load_checkpoint(path)


def test_cuda_without_gpu_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="valid: auto, cpu, cuda"):
        resolve_device("tpu")


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(datasets, tmp_path):
    from mtrl_bench.errors import Diverged

    trainer = _trainer(datasets, "harmodt-f", total_steps=40, batch_size=4, warmup_steps=1,
                       log_every=1000)
    trainer.train(4)
    path = tmp_path / "checkpoint.pt"
    trainer.save_checkpoint(path)
    good = path.read_bytes()
    trainer.scheduler.base_lrs = [1e9]  # a learning rate no model survives
    with pytest.raises(Diverged, match=r"training diverged at step (5|6|7|8): non-finite loss "
                                       r"for (reach-v3|button-press-v3)"):
        trainer.train(8)
    with pytest.raises(Diverged):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == good  # the last good checkpoint is kept
    assert not list(tmp_path.glob(".*.tmp"))


def test_mask_records_carry_the_steps_completed(datasets):
    """So that resuming from a checkpoint at step S (records <= S kept) never repeats one."""
    trainer = _trainer(datasets, build_method("socodt", update_interval=5), total_steps=12,
                       batch_size=2, warmup_steps=1, log_every=1000)
    records = []
    trainer.train(None, records.append)
    assert [r["step"] for r in records if r["kind"] == "mask"] == [6, 11]


def test_weights_are_checked_before_they_are_used(datasets):
    from mtrl_bench.errors import Diverged

    trainer = _trainer(datasets, "promptdt", total_steps=5, warmup_steps=1)
    trainer.check_weights_finite()
    with torch.no_grad():
        trainer.model.predict_action.weight[0, 0] = float("inf")
    with pytest.raises(Diverged, match="non-finite weights after step 0"):
        trainer.check_weights_finite()
