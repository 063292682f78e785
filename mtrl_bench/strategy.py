"""The extension point: a masking strategy decides each task's mask; the trainer does the rest.

A new method is one subclass of :class:`MaskStrategy` decorated with
``@register_strategy("name")``. The trainer calls the hooks below; everything else (the
batched masked forward/backward, optimiser, checkpoints, evaluation) is shared.

Masks are one flat ``(num_tasks, num_maskable)`` float32 tensor (see
:mod:`mtrl_bench.masking`): entry 1 = used in the task's forward pass and updated at full
rate, a value in (0, 1) = absent from the forward pass but updated at that fraction
(soft mask), 0 = absent and not updated by that task.
"""

from __future__ import annotations

from dataclasses import dataclass

import gin
import torch

from mtrl_bench.errors import UserError
from mtrl_bench.mask_init import erk_random_masks
from mtrl_bench.masking import MaskSegment

_REGISTRY: dict[str, type[MaskStrategy]] = {}
_CONFIGURABLE: dict[str, type[MaskStrategy]] = {}  # name -> gin-configurable subclass


def gin_name(name: str) -> str:
    """The gin configurable of a strategy: its name with '-' -> '_' (``harmodt_f.k_max``)."""
    return name.replace("-", "_")


def register_strategy(name: str):
    """Class decorator adding a strategy under ``name``; a second use of a name is an error.

    The strategy also becomes gin-configurable as :func:`gin_name` (``name``). Gin wraps a
    generated subclass, not the class itself, so a subclass registered under another name
    (an ablation) has its own bindings and never inherits its parent's.
    """

    def decorate(cls: type[MaskStrategy]) -> type[MaskStrategy]:
        if not (isinstance(cls, type) and issubclass(cls, MaskStrategy)):
            raise TypeError(f"register_strategy({name!r}) needs a MaskStrategy subclass")
        if name in _REGISTRY:
            raise ValueError(
                f"strategy name {name!r} is already registered by "
                f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}"
            )
        cls.name = name
        _CONFIGURABLE[name] = gin.external_configurable(cls, name=gin_name(name))
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered_strategies() -> dict[str, type[MaskStrategy]]:
    import mtrl_bench.methods  # noqa: F401  (importing registers the built-in methods)

    return dict(sorted(_REGISTRY.items()))


def get_strategy_class(name: str) -> type[MaskStrategy]:
    strategies = registered_strategies()
    if name not in strategies:
        raise UserError(f"unknown method {name!r}; valid: {', '.join(strategies)}")
    return strategies[name]


def build_strategy(name: str, **overrides) -> MaskStrategy:
    """An instance of strategy ``name`` with its gin bindings (``overrides`` win)."""
    get_strategy_class(name)
    return _CONFIGURABLE[name](**overrides)


def describe(cls: type[MaskStrategy]) -> str:
    """First line of the strategy's docstring (what ``mtrl-bench methods`` prints)."""
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


@dataclass
class MaskUpdateContext:
    """Everything a periodic mask update may look at. ``masks`` is edited in place."""

    step: int  # trainer step at which the update happens
    total_steps: int  # training horizon T
    masks: torch.Tensor  # (N, P) float32, edited in place
    task_grads: torch.Tensor  # (N, P) g_i = dL_i/dW_i w.r.t. task i's effective weights
    task_losses: torch.Tensor  # (N,) L_i on the same batch
    theta: torch.Tensor  # (P,) current shared maskable parameters (flat copy)
    segments: list[MaskSegment]  # where each parameter sits in a row
    generator: torch.Generator  # the strategy's own RNG (checkpointed with the trainer)


class MaskStrategy:
    """Base class: no masks at all (every task uses every parameter)."""

    name: str = "base"
    #: model conditioning this method needs: "prompt" (Prompt-DT) or "task_id" (MTDT)
    conditioning: str = "prompt"

    def __init__(self, update_interval: int = 0):
        self.update_interval = update_interval

    @property
    def uses_masks(self) -> bool:
        return False

    def initial_masks(
        self, num_tasks: int, segments: list[MaskSegment], theta: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor | None:
        """(N, P) float32 masks on theta's device, or None for an unmasked model."""
        return None

    def wants_update(self, step: int) -> bool:
        """Whether the trainer should capture per-task gradients and call update at ``step``."""
        return self.uses_masks and self.update_interval > 0 and step > 0 and (
            step % self.update_interval == 0
        )

    def update(self, ctx: MaskUpdateContext) -> dict[str, object]:
        """Edit ``ctx.masks`` in place; return metrics (scalars or per-task lists) to log."""
        return {}

    def state_dict(self) -> dict:
        """Strategy state beyond the masks (which the trainer checkpoints itself)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @staticmethod
    def mask_metrics(masks: torch.Tensor) -> dict[str, list[float]]:
        """Per-task sparsity (entries with M < 1) and mean soft value of those entries."""
        suppressed = masks < 1
        count = suppressed.sum(dim=1)
        soft_sum = torch.where(suppressed, masks, torch.zeros_like(masks)).sum(dim=1)
        return {
            "sparsity": (count.float() / masks.shape[1]).tolist(),
            "mean_soft_value": (soft_sum / count.clamp(min=1)).tolist(),
        }


class ERKMaskStrategy(MaskStrategy):
    """Base for methods that start from an independent random ERK mask per task at
    ``initial_sparsity`` (HarmoDT, SoCo-DT)."""

    initial_sparsity: float = 0.2

    @property
    def uses_masks(self) -> bool:
        return True

    def initial_masks(
        self, num_tasks: int, segments: list[MaskSegment], theta: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        return erk_random_masks(num_tasks, segments, self.initial_sparsity, generator,
                                device=theta.device)
