"""The batched masked forward/backward equals an explicit per-task loop over masked copies."""

import copy

import torch

from mtrl_bench.training.masking import TaskMasks
from mtrl_bench.training.model import PromptDT, PromptDTConfig


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
    model = PromptDT(cfg).double()
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


def test_paper_model_size_matches_harmodt():
    model = PromptDT(PromptDTConfig())
    assert model.num_maskable == 4_738_560  # HarmoDT: 4.74M inside the blocks
    assert 5.2e6 < sum(p.numel() for p in model.parameters()) < 5.35e6  # HarmoDT: 5.29M
