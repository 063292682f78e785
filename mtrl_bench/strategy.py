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
_ROLES: dict[str, MethodRole] = {}
ROLES = ("baseline", "proposed", "ablation")


@dataclass(frozen=True)
class MethodRole:
    """Where a method's results go: baselines are what others are tested against, the
    proposed method and its ablations fill the ablation table (paper Table 4)."""

    role: str = "proposed"  # one of ROLES
    ablation_of: str | None = None  # for an ablation: the method it takes apart
    components: str | None = None  # short label of its components in the ablation table

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")
        if (self.role == "ablation") != (self.ablation_of is not None):
            raise ValueError("an ablation names the method it is an ablation of "
                             "(ablation_of=...), and only an ablation does")

    def as_dict(self) -> dict:
        return {"role": self.role, "ablation_of": self.ablation_of,
                "components": self.components}


def gin_name(name: str) -> str:
    """The gin configurable of a strategy: its name with '-' -> '_' (``harmodt_f.k_max``)."""
    return name.replace("-", "_")


def register_strategy(name: str, *, role: str = "proposed", ablation_of: str | None = None,
                      components: str | None = None):
    """Class decorator adding a strategy under ``name``; a second use of a name is an error.

    ``role`` places the method in the tables without editing them: "baseline" (tested
    against), "proposed" (the default) or "ablation" (with ``ablation_of``, the method it
    takes apart); ``components`` labels its row in the ablation table (e.g. "A+M"). The
    role belongs to the registration, so a subclass registered under another name never
    inherits it.

    The strategy also becomes gin-configurable as :func:`gin_name` (``name``). Gin wraps a
    generated subclass, not the class itself, so a subclass registered under another name
    (an ablation) has its own bindings and never inherits its parent's.
    """

    method_role = MethodRole(role, ablation_of, components)

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
        _ROLES[name] = method_role
        return cls

    return decorate


def registered_strategies() -> dict[str, type[MaskStrategy]]:
    import mtrl_bench.methods  # noqa: F401  (importing registers the built-in methods)

    # built-in methods first, in the order methods/__init__.py imports them (the order
    # tables list methods in), then the others in the order they were registered
    order = list(_REGISTRY)
    return dict(sorted(_REGISTRY.items(), key=lambda item: (
        not item[1].__module__.startswith("mtrl_bench.methods."), order.index(item[0]))))


def method_role(name: str) -> MethodRole | None:
    """The registered role of method ``name`` (None for a name not registered here)."""
    registered_strategies()
    return _ROLES.get(name)


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
    #: constructor parameters this class accepts but ignores, with why: binding one is an
    #: error and they are not part of a run's identity (an ablation that switches a
    #: component off ignores that component's parameters)
    unused_parameters: dict[str, str] = {}

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
    def mask_metrics(masks: torch.Tensor) -> dict[str, list]:
        """Per task: sparsity (share of entries with M < 1), soft share (0 < M < 1: absent
        from the forward pass but still updated) and the mean M of the soft entries (None
        where a task has none)."""
        soft = (masks > 0) & (masks < 1)
        soft_count = soft.sum(dim=1)
        soft_sum = torch.where(soft, masks, torch.zeros_like(masks)).sum(dim=1)
        means = (soft_sum / soft_count.clamp(min=1)).tolist()
        return {
            "sparsity": ((masks < 1).sum(dim=1).float() / masks.shape[1]).tolist(),
            "soft_share": (soft_count.float() / masks.shape[1]).tolist(),
            "mean_soft_value": [m if c else None for m, c in zip(means, soft_count.tolist())],
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


#: signed log10 histogram of scores logged at mask updates: 10^LOW .. 10^HIGH in
#: magnitude, PER_DECADE bins a decade on each side, and one bin for |score| <= 10^LOW
HIST_LOW, HIST_HIGH, HIST_PER_DECADE = -22, 2, 4


def signed_log_histogram(scores: torch.Tensor) -> dict:
    """Counts of ``scores`` (any shape, all tasks pooled) in signed log10 bins.

    Conflict scores are products of gradients: they span many decades on both sides of 0,
    so linear bins put nearly everything in one bin. Bin edges follow from the record
    (:func:`histogram_edges`); the record keeps only the span of non-empty bins. Overwrites
    ``scores``.
    """
    side = (HIST_HIGH - HIST_LOW) * HIST_PER_DECADE
    negative = (scores < 0).to(torch.int8).mul_(-2).add_(1)  # -1 below 0, else +1
    # u = sign * (log10|s| - LOW): 0 for |s| <= 10^LOW, +-(HIGH - LOW) at the top
    u = scores.abs_().clamp_(min=10.0 ** HIST_LOW, max=10.0 ** HIST_HIGH).log10_()
    u.sub_(HIST_LOW).mul_(negative)
    del negative
    zero = int((u == 0).sum())
    span = float(HIST_HIGH - HIST_LOW)
    counts = torch.histc(u, bins=2 * side, min=-span, max=span).long()
    counts[side] -= zero  # histc puts u == 0 in the first positive bin
    full = counts[:side].tolist() + [zero] + counts[side:].tolist()
    nonzero = [i for i, c in enumerate(full) if c]
    first, last = (nonzero[0], nonzero[-1]) if nonzero else (side, side)
    return {"scale": "signed-log10", "low": HIST_LOW, "high": HIST_HIGH,
            "per_decade": HIST_PER_DECADE, "first": first, "counts": full[first:last + 1]}


def histogram_edges(low: int, high: int, per_decade: int) -> list[float]:
    """All bin edges, in score units, of a :func:`signed_log_histogram` with these bounds;
    a record's counts fill bins ``first, first + 1, ...``."""
    magnitudes = [10.0 ** (low + k / per_decade) for k in range((high - low) * per_decade + 1)]
    return [-m for m in reversed(magnitudes)] + magnitudes  # the zero bin sits between
