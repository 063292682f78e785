"""The extension point: a method is one registered class; the trainer does the rest.

A method may do either or both of two things, each a hook the trainer calls:

- **own per-task masks** (the masking family: HarmoDT, SoCo-DT): ``initial_masks`` gives one
  flat ``(num_tasks, num_maskable)`` float32 tensor over the parameters inside the
  transformer blocks (see :mod:`mtrl_bench.training.masking`): 1 = used in the task's forward pass
  and updated at full rate, a value in (0, 1) = absent from the forward pass but updated at
  that fraction (soft mask), 0 = absent and not updated by that task. Every
  ``update_interval`` steps, right after the optimiser step, ``update_masks`` edits them
  from each task's gradient w.r.t. its effective weights, captured by the step's own
  backward pass.
- **combine the per-task gradients** of each step (the gradient-surgery family: PCGrad,
  CAGrad): with ``combines_gradients = True`` the trainer computes every task's gradient of
  its own loss for the parameters ``gradient_parameters`` names (default: all shared
  parameters) and hands them to ``combine_gradients`` before gradient clipping and the
  optimiser step; the result replaces the mean over tasks that the other methods step on.

Everything else (the batched forward/backward, optimiser, checkpoints, evaluation) is
shared. ``@register_method("name", role=...)`` registers a class; built-in methods are
found through the ``mtrl_bench.methods`` entry point group (setup.cfg), which is also how a
separately installed package adds its own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import gin
import torch

from mtrl_bench.errors import UserError
from mtrl_bench.training.masking import MaskSegment

ENTRY_POINT_GROUP = "mtrl_bench.methods"
ROLES = ("baseline", "proposed", "ablation")
_REGISTRY: dict[str, type[Method]] = {}
_CONFIGURABLE: dict[str, type[Method]] = {}  # name -> gin-configurable subclass
_ROLES: dict[str, MethodRole] = {}
_BUILT_IN: list[str] = []  # names registered while loading the entry points
_loaded = False


@dataclass(frozen=True)
class MethodRole:
    """Where a method's results go: baselines are what others are tested against, the
    proposed method and its ablations fill the ablation table (paper Table 4)."""

    role: str = "proposed"  # one of ROLES
    ablation_of: str | None = None  # for an ablation: the method it takes apart
    components: str | None = None  # short label of its components in the ablation table
    #: where its rows go among those of its role (smaller first); None: after every method
    #: that has one, by name. Recorded with each run, so tables never depend on import order
    order: int | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")
        if (self.role == "ablation") != (self.ablation_of is not None):
            raise ValueError("an ablation names the method it is an ablation of "
                             "(ablation_of=...), and only an ablation does")

    def as_dict(self) -> dict:
        return {"role": self.role, "ablation_of": self.ablation_of,
                "components": self.components, "order": self.order}


def gin_name(name: str) -> str:
    """The gin configurable of a method: its name with '-' -> '_' (``harmodt_f.k_max``)."""
    return name.replace("-", "_")


def _same_source(a: type, b: type) -> bool:
    """The same class from the same source imported twice under two module names (e.g.
    ``methods.socodt`` from the repository root and the installed ``mtrl_bench.methods``,
    possibly of another checkout): same module file name, class name and file content."""
    try:
        files = [inspect.getsourcefile(cls) for cls in (a, b)]
        if a.__qualname__ != b.__qualname__ or None in files:
            return False
        texts = [Path(f).read_bytes() for f in files]
    except (TypeError, OSError):
        return False
    return Path(files[0]).name == Path(files[1]).name and texts[0] == texts[1]


def register_method(name: str, *, role: str = "proposed", ablation_of: str | None = None,
                    components: str | None = None, order: int | None = None):
    """Class decorator adding a method under ``name``.

    A different class under a name already taken is an error; the same class imported again
    from the same file under another module path is a no-op (the first stays registered).

    ``role`` places the method in the tables without editing them: "baseline" (tested
    against), "proposed" (the default) or "ablation" (with ``ablation_of``, the method it
    takes apart); ``components`` labels its row in the ablation table (e.g. "A+M");
    ``order`` places its rows among those of its role (smaller first; methods without one
    follow, by name). The role belongs to the registration, so a subclass registered under
    another name never inherits it. Every run records it (meta.json "role"), and tables
    read it from there.

    The method also becomes gin-configurable as :func:`gin_name` (``name``). Gin wraps a
    generated subclass, not the class itself, so a subclass registered under another name
    (an ablation) has its own bindings and never inherits its parent's.
    """

    method_role = MethodRole(role, ablation_of, components, order)

    def decorate(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) needs a Method subclass")
        _load_entry_points()  # built-ins first, whichever module is imported first
        if name in _REGISTRY:
            if _same_source(_REGISTRY[name], cls):
                return cls
            raise ValueError(
                f"method name {name!r} is already registered by "
                f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}"
            )
        cls.name = name
        _CONFIGURABLE[name] = gin.external_configurable(cls, name=gin_name(name))
        _REGISTRY[name] = cls
        _ROLES[name] = method_role
        return cls

    return decorate


def _load_entry_points() -> None:
    """Import every module of the ``mtrl_bench.methods`` entry point group, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    entries = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda e: (e.name != "builtin", e.name))  # the built-ins first
    if not entries:
        raise UserError(f"no methods found: the {ENTRY_POINT_GROUP} entry points are missing "
                        "(an install older than them?); reinstall: pip install -e .")
    for entry in entries:
        before = set(_REGISTRY)
        try:
            entry.load()
        except Exception as err:  # one broken plugin must not hide the others
            raise UserError(f"cannot load the methods of entry point {entry.name!r} "
                            f"({entry.value}): {type(err).__name__}: {err}") from err
        finally:
            _BUILT_IN.extend(n for n in _REGISTRY if n not in before and n not in _BUILT_IN)


def registered_methods() -> dict[str, type[Method]]:
    """Every registered method: those of the entry points first, in the order their modules
    register them (the order tables list methods in), then the others as registered."""
    _load_entry_points()
    order = _BUILT_IN + [n for n in _REGISTRY if n not in _BUILT_IN]
    return {name: _REGISTRY[name] for name in order}


def method_role(name: str) -> MethodRole | None:
    """The registered role of method ``name`` (None for a name not registered here)."""
    _load_entry_points()
    return _ROLES.get(name)


def get_method_class(name: str) -> type[Method]:
    methods = registered_methods()
    if name not in methods:
        raise UserError(f"unknown method {name!r}; valid: {', '.join(methods)}")
    return methods[name]


def build_method(name: str, **overrides) -> Method:
    """An instance of method ``name`` with its gin bindings (``overrides`` win)."""
    get_method_class(name)
    return _CONFIGURABLE[name](**overrides)


def method_summaries() -> list[tuple[str, str, str]]:
    """(method key, role, one-line description) of every registered method."""
    rows = []
    for name, cls in registered_methods().items():
        role = method_role(name)
        rows.append((name, role.role + (f" of {role.ablation_of}" if role.ablation_of else ""),
                     describe(cls)))
    return rows


def describe(cls: type[Method]) -> str:
    """First line of the method's docstring (what ``mtrl-bench methods`` prints)."""
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


@dataclass
class MaskUpdateContext:
    """Everything a periodic mask update may look at. ``masks`` is edited in place."""

    step: int  # trainer step at which the update happens
    total_steps: int  # training horizon T
    masks: torch.Tensor  # (N, P) float32, edited in place
    task_grads: torch.Tensor | None  # (N, P) g_i = dL_i/dW_i w.r.t. task i's effective
    # weights (None for a method with mask_update_needs_gradients = False)
    task_losses: torch.Tensor  # (N,) L_i on the same batch
    theta: torch.Tensor  # (P,) current shared maskable parameters (flat copy)
    segments: list[MaskSegment]  # where each parameter sits in a row
    generator: torch.Generator  # the method's own RNG (checkpointed with the trainer)


@dataclass
class GradientContext:
    """One step's per-task gradients, for :meth:`Method.combine_gradients`."""

    step: int  # trainer step (0-based) whose gradients these are
    total_steps: int
    task_grads: torch.Tensor  # (N, P) float32: dL_i/dθ over gradient_parameters, flattened
    task_losses: torch.Tensor  # (N,) L_i
    generator: torch.Generator  # the method's own RNG (checkpointed with the trainer)


class Method:
    """Base class: every task uses every parameter and the step follows the mean gradient.

    Subclasses override the mask hooks, the gradient hook, or both (see the module doc).
    """

    name: str = "base"
    #: model conditioning this method needs: "prompt" (Prompt-DT), "task_id" (MTDT) or
    #: "prompt-film" (Prompt-DT with per-task FiLM in every block: task-film)
    conditioning: str = "prompt"
    #: constructor parameters this class accepts but ignores, with why: binding one is an
    #: error and they are not part of a run's identity (an ablation that switches a
    #: component off ignores that component's parameters)
    unused_parameters: dict[str, str] = {}
    #: True: the trainer computes per-task gradients every step and steps on
    #: :meth:`combine_gradients`; False: it steps on the mean gradient (one backward pass)
    combines_gradients: bool = False
    #: False: :meth:`update_masks` does not read ``ctx.task_grads`` (then None), so the
    #: update step captures none
    mask_update_needs_gradients: bool = True
    #: True: mask entries may lie strictly between 0 and 1 (absent from the forward pass,
    #: updated at that rate); False: every entry stays 0 or 1, checked at every refresh
    #: of the trainer's masks (initial, each update, checkpoint load)
    soft_masks: bool = False

    def __init__(self, update_interval: int = 0):
        self.update_interval = update_interval

    # ----------------------------------------------------------------- masks
    @property
    def uses_masks(self) -> bool:
        """Whether the method owns per-task masks: inferred from its defining
        :meth:`initial_masks` (a method that starts masks and forgot to say it uses them
        would otherwise never have them updated)."""
        return type(self).initial_masks is not Method.initial_masks

    def initial_masks(
        self, num_tasks: int, segments: list[MaskSegment], theta: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor | None:
        """(N, P) float32 masks on theta's device, or None for an unmasked model."""
        return None

    def wants_update(self, step: int) -> bool:
        """Whether the trainer should capture per-task gradients and call
        :meth:`update_masks` at ``step``."""
        return self.uses_masks and self.update_interval > 0 and step > 0 and (
            step % self.update_interval == 0
        )

    def update_masks(self, ctx: MaskUpdateContext) -> dict[str, object]:
        """Edit ``ctx.masks`` in place; return metrics (scalars or per-task lists) to log."""
        return {}

    # ----------------------------------------------------------------- gradients
    def gradient_parameters(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        """The shared parameters :meth:`combine_gradients` acts on (default: all of them);
        the others step on the mean gradient over tasks."""
        return list(model.named_parameters())

    def combine_gradients(self, ctx: GradientContext) -> torch.Tensor:
        """(P,) the update direction from the (N, P) per-task gradients: here their mean
        (what the loss mean_i L_i gives); called only with ``combines_gradients = True``,
        after the backward pass and before clipping and the optimiser step."""
        return ctx.task_grads.mean(dim=0)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Method state beyond the masks (which the trainer checkpoints itself)."""
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


#: signed log10 histogram of scores logged at mask updates: 10^LOW .. 10^HIGH in
#: magnitude, PER_DECADE bins a decade on each side, and one bin for |score| <= 10^LOW
HIST_LOW, HIST_HIGH, HIST_PER_DECADE = -22, 2, 4


def signed_log_histogram(scores: torch.Tensor) -> dict:
    """Counts of ``scores`` (any shape, all tasks pooled) in signed log10 bins.

    Conflict scores are products of gradients: they span many decades on both sides of 0,
    so linear bins put nearly everything in one bin. Bin edges follow from the record
    (``mtrl_bench.runs.rundir.histogram_edges``); the record keeps only the span of
    non-empty bins. Overwrites ``scores``.
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
