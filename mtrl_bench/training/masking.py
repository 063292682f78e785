"""Per-task parameter masks applied inside one batched forward/backward for all tasks.

Semantics (README "Masking semantics"): for task i with mask M_i in [0, 1],

* forward uses the effective weights W_i = theta * 1[M_i == 1] (the binary part), and
* backward sends d L_i / d W_i, multiplied by M_i, back to the shared theta.

So theta.grad = sum_i (dL/dW_i) * M_i. Soft-masked (conflicting) entries are absent from
task i's forward pass but still receive a discounted update from task i.

All masks live in one flat ``(num_tasks, num_maskable)`` float32 tensor so methods can
work on whole rows (quantiles, top-k) without looping over parameters; each masked
parameter reads a ``(num_tasks, *shape)`` view of it. The same backward can also copy the
per-task gradients dL_i/dW_i into a flat buffer of that shape, which is how methods get
g_i for mask updates without one extra backward pass per task.

A forward pass builds every task's effective weights of every masked parameter at once
(:meth:`TaskMasks.materialize`, :class:`_AllTasksMaskedWeights`): one elementwise multiply
of the flat theta row with the flat ``(N, P)`` mask, and in the backward one concatenation
of the per-task gradients, one multiply and one sum over tasks, instead of that work once
per parameter (72 parameters in the paper model). The arithmetic is the same, entry by
entry, as the per-parameter formulation kept in :meth:`TaskMasks.effective` (float32
results are bit-identical; tests/test_masking.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskSegment:
    """Where one maskable parameter sits inside the flat mask row."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def stop(self) -> int:
        return self.offset + self.numel


def build_segments(named_params: list[tuple[str, torch.nn.Parameter]]) -> list[MaskSegment]:
    segments, offset = [], 0
    for name, param in named_params:
        segments.append(MaskSegment(name, tuple(param.shape), offset))
        offset += param.numel()
    return segments


class _TaskMaskedWeight(torch.autograd.Function):
    """theta (shape S) -> effective per-task weights (N, *S) = theta * binary.

    Backward returns sum_i grad_i * soft_i and optionally records grad_i (scaled) into
    ``capture`` so masking methods see each task's gradient w.r.t. its effective weights.
    ``binary`` and ``grad_scale`` (= soft) are already in the compute dtype (bf16 under
    autocast), so the (N, *S) weights are written once, in the dtype the matmul reads.
    """

    @staticmethod
    def forward(ctx, theta, grad_scale, binary, capture, capture_scale):
        ctx.save_for_backward(grad_scale)
        ctx.capture = capture
        ctx.capture_scale = capture_scale
        ctx.theta_dtype = theta.dtype
        return theta.to(binary.dtype).unsqueeze(0) * binary

    @staticmethod
    def backward(ctx, grad):
        (grad_scale,) = ctx.saved_tensors
        if ctx.capture is not None:  # added: one backward per task fills one row each
            ctx.capture.add_(grad.reshape(ctx.capture.shape) * ctx.capture_scale)
        # sum over tasks, accumulated in at least float32 whatever the compute dtype
        acc = torch.promote_types(grad.dtype, torch.float32)
        theta_grad = (grad.to(grad_scale.dtype) * grad_scale).sum(0, dtype=acc)
        return theta_grad.to(ctx.theta_dtype), None, None, None, None


class _AllTasksMaskedWeights(torch.autograd.Function):
    """Every masked parameter at once: thetas (each of shape S_j) -> per-task effective
    weights (N, *S_j) = theta_j * binary, as views of one (N, P) product.

    The same arithmetic as :class:`_TaskMaskedWeight` on each parameter (elementwise
    products; the backward's sum over tasks reduces the same N values per entry in the same
    order), in a constant number of large operations instead of a few per parameter.
    """

    @staticmethod
    def forward(ctx, masks, *thetas):
        binary = masks.binary
        ctx.save_for_backward(masks.grad_scale)
        ctx.capture = masks.capture
        ctx.capture_scale = masks.capture_scale
        ctx.theta_dtype = thetas[0].dtype
        ctx.shapes = [t.shape for t in thetas]
        flat = torch.cat([t if t.dim() == 1 else t.view(-1) for t in thetas])
        effective = flat.to(binary.dtype).unsqueeze(0) * binary  # (N, P)
        n = binary.shape[0]
        return tuple(part if len(shape) == 1 else part.view(n, *shape)
                     for part, shape in zip(effective.split(masks.sizes, dim=1), ctx.shapes))

    @staticmethod
    def backward(ctx, *grads):
        (grad_scale,) = ctx.saved_tensors
        n = grad_scale.shape[0]
        parts = [torch.zeros((n, *shape), dtype=grad_scale.dtype, device=grad_scale.device)
                 if g is None else g for g, shape in zip(grads, ctx.shapes)]
        grad = torch.cat([g if g.dim() == 2 else g.reshape(n, -1) for g in parts],
                         dim=1)  # (N, P): dL_i/dW_i
        if ctx.capture is not None:  # added: one backward per task fills one row each
            ctx.capture.add_(grad * ctx.capture_scale)
        acc = torch.promote_types(grad.dtype, torch.float32)
        theta_grad = (grad.to(grad_scale.dtype) * grad_scale).sum(0, dtype=acc)
        theta_grad = theta_grad.to(ctx.theta_dtype)
        return (None, *(part if len(shape) == 1 else part.view(shape) for part, shape
                        in zip(theta_grad.split([s.numel() for s in ctx.shapes]),
                               ctx.shapes)))


class MaterializedMasks:
    """What a masked layer reads during one forward pass: every task's effective weights of
    every masked parameter, built at once by :meth:`TaskMasks.materialize`."""

    def __init__(self, thetas: list[torch.Tensor], weights: tuple[torch.Tensor, ...]):
        self.thetas = thetas
        self.weights = weights

    def effective(self, seg_index: int, theta: torch.Tensor) -> torch.Tensor:
        if theta is not self.thetas[seg_index]:
            raise ValueError(f"masked segment {seg_index} was materialised from another "
                             "parameter than the layer's own")
        return self.weights[seg_index]


class TaskMasks:
    """The masks of all tasks for one model, plus the views the layers read.

    ``values`` is the source of truth (entries in [0, 1]: binary for HarmoDT, soft for
    SoCo-DT); the binary forward mask (values == 1) and the backward gradient scale
    (values) are cached in ``compute_dtype`` and must be refreshed with :meth:`refresh`
    after a method edits ``values``.

    ``soft_values`` says whether entries may lie strictly between 0 and 1 (the method's
    ``soft_masks``). Without them the gradient scale in a lower compute dtype is the
    forward mask's own tensor (half the cache's memory), and every refresh checks that the
    masks are still binary. The choice is fixed at construction, not read off the values,
    because torch.compile guards on whether the two are one tensor: masks turning soft at
    the first update would otherwise recompile the step (twice: with and without capture).
    """

    def __init__(self, values: torch.Tensor, segments: list[MaskSegment],
                 compute_dtype: torch.dtype | None = None, soft_values: bool = True):
        if values.dim() != 2 or values.shape[1] != segments[-1].stop:
            raise ValueError(
                f"mask tensor has shape {tuple(values.shape)}, expected (num_tasks, "
                f"{segments[-1].stop})"
            )
        self.values = values
        self.segments = segments
        self.compute_dtype = compute_dtype or values.dtype
        self.soft_values = soft_values
        self.capture: torch.Tensor | None = None
        self.capture_scale = 1.0
        self.sizes = [seg.numel for seg in segments]
        self.refresh()

    @property
    def num_tasks(self) -> int:
        return self.values.shape[0]

    def refresh(self) -> None:
        """Recompute the cached forward mask and gradient scale after ``values`` changed
        (ValueError on a soft value in masks declared binary)."""
        hard = self.values == 1
        if not self.soft_values and not torch.equal(hard, self.values != 0):  # one sync
            raise ValueError(
                "masks hold values strictly between 0 and 1, but were declared binary: a "
                "method whose masks can be soft sets the class attribute soft_masks = True")
        self.binary = hard.to(self.compute_dtype)
        if self.compute_dtype == self.values.dtype:
            self.grad_scale = self.values
        elif not self.soft_values:  # binary masks: the scale is the forward mask itself
            self.grad_scale = self.binary
        else:
            self.grad_scale = self.values.to(self.compute_dtype)

    def start_capture(self, scale: float) -> torch.Tensor:
        """Record per-task gradients (times ``scale``) during the next backward pass."""
        self.capture = torch.zeros_like(self.values)
        self.capture_scale = scale
        return self.capture

    def stop_capture(self) -> None:
        # the scale goes back too: torch.compile specialises on it, so a step without capture
        # must look the same as before the first capture (or every variant recompiles)
        self.capture = None
        self.capture_scale = 1.0

    def _view(self, flat: torch.Tensor, seg: MaskSegment) -> torch.Tensor:
        return flat[:, seg.offset : seg.stop].view(self.num_tasks, *seg.shape)

    def materialize(self, thetas: list[torch.Tensor]) -> MaterializedMasks:
        """Every task's effective weights for every segment (``thetas``: the parameters in
        segment order), built in one fused operation; layers read them through the
        returned object's :meth:`MaterializedMasks.effective`, as they would this one's."""
        if len(thetas) != len(self.segments):
            raise ValueError(f"{len(thetas)} parameters for {len(self.segments)} mask segments")
        return MaterializedMasks(thetas, _AllTasksMaskedWeights.apply(self, *thetas))

    def effective(self, seg_index: int, theta: torch.Tensor) -> torch.Tensor:
        """Per-task effective weights (N, *theta.shape) for the segment's parameter, on its
        own (the per-parameter formulation; a forward pass uses :meth:`materialize`)."""
        seg = self.segments[seg_index]
        capture = None if self.capture is None else self._view(self.capture, seg)
        return _TaskMaskedWeight.apply(
            theta,
            self._view(self.grad_scale, seg),
            self._view(self.binary, seg),
            capture,
            self.capture_scale,
        )
