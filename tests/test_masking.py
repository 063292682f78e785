"""The batched masked forward/backward equals an explicit per-task loop over masked copies."""

import copy

import pytest
import torch

from mtrl_bench.training.masking import TaskMasks
from mtrl_bench.training.model import DecisionTransformer, PromptDTConfig


def _random_batch(n, b, k, p):
    def rnd(*shape):
        return torch.randn(*shape, dtype=torch.float64)

    batch = dict(
        states=rnd(n, b, k, 39), actions=rnd(n, b, k, 4), returns_to_go=rnd(n, b, k, 1),
        timesteps=torch.randint(0, 500, (n, b, k)), attention_mask=torch.ones(n, b, k),
    )
    batch["attention_mask"][:, 0, : k // 2] = 0  # left padding on one sequence per task
    prompt = dict(
        states=rnd(n, 1, p, 39), actions=rnd(n, 1, p, 4), returns_to_go=rnd(n, 1, p, 1),
        timesteps=torch.randint(0, 500, (n, 1, p)), attention_mask=torch.ones(n, 1, p),
    )
    return batch, prompt


def test_batched_masked_pass_equals_per_task_loop():
    torch.manual_seed(0)
    cfg = PromptDTConfig(n_layer=2, n_embd=32, n_head=2, n_inner=64, dropout=0.0,
                         context_len=4, prompt_len=2)
    model = DecisionTransformer(cfg).double()
    n, b, k, p = 3, 2, 4, 2
    batch, prompt = _random_batch(n, b, k, p)
    soft = torch.rand(n, model.num_maskable, dtype=torch.float64)
    soft[soft > 0.3] = 1.0  # ~70% ones, the rest soft values in (0, 0.3]
    masks = TaskMasks(soft, model.mask_segments)
    target = torch.randn(n, b, k, 4, dtype=torch.float64)

    captured = masks.start_capture(scale=n)
    pred = model(**batch, prompt=prompt, masks=masks)
    ((pred - target) ** 2).mean(dim=(1, 2, 3)).mean().backward()

    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    segments = dict(zip((name for name, _ in model.maskable_parameters()), model.mask_segments))
    for i in range(n):
        copy_i = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in copy_i.maskable_parameters():
                seg = segments[name]
                param.mul_(masks.binary[i, seg.offset:seg.stop].view(seg.shape))
        pred_i = copy_i(**{key: v[i:i + 1] for key, v in batch.items()},
                        prompt={key: v[i:i + 1] for key, v in prompt.items()})
        torch.testing.assert_close(pred_i, pred[i:i + 1])
        copy_i.zero_grad()
        ((pred_i - target[i:i + 1]) ** 2).mean().backward()
        for name, param in copy_i.named_parameters():
            if name in segments:  # gradient w.r.t. the effective weights, scaled by M_i
                seg = segments[name]
                torch.testing.assert_close(
                    captured[i, seg.offset:seg.stop].view(seg.shape), param.grad)
                expected[name] += param.grad * soft[i, seg.offset:seg.stop].view(seg.shape) / n
            else:
                expected[name] += param.grad / n
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-12, rtol=1e-9)


def _tiny_model():
    return DecisionTransformer(PromptDTConfig(n_layer=1, n_embd=16, n_head=1, n_inner=32,
                                              dropout=0.0, context_len=4, prompt_len=2))


def test_compiled_masked_step_does_not_recompile_when_masks_turn_soft():
    """SoCo-DT's masks start binary and turn soft at the first update. In bf16 (the GPU's
    compute dtype) the cached gradient scale must not switch from sharing the forward mask's
    tensor to a tensor of its own then: torch.compile guards on that aliasing, and the
    switch recompiled the step in the middle of training (measured on an H200)."""
    torch.manual_seed(0)
    model, n = _tiny_model(), 3
    masks = TaskMasks(torch.ones(n, model.num_maskable), model.mask_segments,
                      compute_dtype=torch.bfloat16, soft_values=True)
    batch, prompt = (
        {key: v.float() if v.is_floating_point() else v for key, v in part.items()}
        for part in _random_batch(n, 2, 4, 2))
    compiled = torch.compile(model, backend="aot_eager")

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = compiled(**batch, prompt=prompt, masks=masks)
        pred.float().square().mean().backward()

    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        step()
        masks.values[0, ::2] = 0.5
        masks.refresh()
        step()


def test_masks_declared_binary_share_one_tensor_and_refuse_soft_values():
    model = _tiny_model()
    masks = TaskMasks(torch.ones(2, model.num_maskable), model.mask_segments,
                      compute_dtype=torch.bfloat16, soft_values=False)
    assert masks.grad_scale is masks.binary
    masks.values[1, 0] = 0.0
    masks.refresh()  # 0 and 1 only: fine
    masks.values[1, 1] = 0.5
    with pytest.raises(ValueError, match="soft_masks = True"):
        masks.refresh()


def test_paper_model_size_matches_harmodt():
    model = DecisionTransformer(PromptDTConfig())
    assert model.num_maskable == 4_738_560  # HarmoDT: 4.74M inside the blocks
    assert 5.2e6 < sum(p.numel() for p in model.parameters()) < 5.35e6  # HarmoDT: 5.29M


def _fused_and_per_parameter(dtype, autocast):
    """One forward/backward with gradient capture of the fused mask path and of the
    per-parameter formulation it replaced (TaskMasks.effective for each layer), from the
    same model, batch and soft masks: (prediction, parameter gradients, capture) of each."""
    torch.manual_seed(0)
    model = _tiny_model()
    n = 3
    batch, prompt = (
        {key: v.float() if v.is_floating_point() else v for key, v in part.items()}
        for part in _random_batch(n, 2, 4, 2))
    soft = torch.rand(n, model.num_maskable)
    soft[soft > 0.3] = 1.0
    masks = TaskMasks(soft, model.mask_segments, compute_dtype=dtype, soft_values=True)

    def run():
        model.zero_grad(set_to_none=True)
        captured = masks.start_capture(scale=n)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            pred = model(**batch, prompt=prompt, masks=masks)
        pred.float().square().mean().backward()
        masks.stop_capture()
        return pred, {name: p.grad.clone() for name, p in model.named_parameters()}, captured

    fused = run()
    with pytest.MonkeyPatch.context() as patch:  # layers read the masks segment by segment
        patch.setattr(TaskMasks, "materialize", lambda self, thetas: self)
        per_parameter = run()
    return fused, per_parameter


def test_fused_masked_weights_are_bit_identical_to_the_per_parameter_path():
    """float32: the fused path (every task's weights of every parameter in one multiply,
    one concatenated backward) gives the same bits as the per-parameter one."""
    (pred, grads, captured), (pred_ref, grads_ref, captured_ref) = \
        _fused_and_per_parameter(torch.float32, autocast=False)
    assert torch.equal(pred, pred_ref)
    assert torch.equal(captured, captured_ref) and captured.abs().sum() > 0
    for name, grad in grads.items():
        assert torch.equal(grad, grads_ref[name]), name


def test_fused_masked_weights_match_in_bf16():
    """bf16 autocast with masks cached in bf16 (the GPU path), here on the CPU."""
    (pred, grads, captured), (pred_ref, grads_ref, captured_ref) = \
        _fused_and_per_parameter(torch.bfloat16, autocast=True)
    assert captured.dtype == torch.float32
    torch.testing.assert_close(pred, pred_ref, rtol=1.6e-2, atol=1e-3)
    torch.testing.assert_close(captured, captured_ref, rtol=1.6e-2, atol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1.6e-2, atol=1e-4, msg=name)


def test_materialized_masks_refuse_another_parameter():
    model = _tiny_model()
    masks = TaskMasks(torch.ones(2, model.num_maskable), model.mask_segments)
    thetas = [p for _, p in model.maskable_parameters()]
    with pytest.raises(ValueError, match="parameters for"):
        masks.materialize(thetas[:-1])
    materialized = masks.materialize(thetas)
    with pytest.raises(ValueError, match="another parameter"):
        materialized.effective(0, thetas[1])


def test_compiled_masked_step_captures_the_eager_gradients():
    """torch.compile of the fused masked step (aot_eager: the autograd graph a GPU backend
    would get) gives the eager step's gradients and capture, with and without capture, and
    compiles each variant once."""
    torch.manual_seed(0)
    model, n = _tiny_model(), 3
    soft = torch.rand(n, model.num_maskable)
    soft[soft > 0.3] = 1.0
    masks = TaskMasks(soft, model.mask_segments)
    batch, prompt = (
        {key: v.float() if v.is_floating_point() else v for key, v in part.items()}
        for part in _random_batch(n, 2, 4, 2))

    def step(fn, capture):
        model.zero_grad(set_to_none=True)
        captured = masks.start_capture(scale=n) if capture else None
        fn(**batch, prompt=prompt, masks=masks).square().mean().backward()
        masks.stop_capture()
        return torch.cat([p.grad.flatten() for p in model.parameters()]), captured

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    for i, capture in enumerate((True, False, True, False)):
        # the variants with and without capture compile once each, then never again
        with torch._dynamo.config.patch(error_on_recompile=i >= 2):
            got = step(compiled, capture)
        want = step(model, capture)
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-9)
        if capture:
            torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-9)
