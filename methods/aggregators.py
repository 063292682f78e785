"""The gradient-combination family of multi-task learning, from torchjd (Quinton & Rey,
"Jacobian Descent for Multi-Objective Optimization", 2024; https://torchjd.org, 0.18.0).

A torchjd *aggregator* maps the matrix of per-task gradients (N tasks x P parameters) to one
update vector, which is exactly :meth:`Method.combine_gradients`. :class:`TorchJDAggregator`
is the one adapter; each method below is a registered subclass that names its paper, its
parameters (constructor arguments, so they are gin-configurable, part of the run identity
and listed by ``mtrl-bench methods --params``) and how to build its torchjd aggregator.

**Scale.** Every method here steps on the mean over tasks (the base class returns it), as
PCGrad does (methods/pcgrad.py). Aggregators come in two scales, told apart by what they
return for N mutually orthogonal task gradients of unit norm (no conflict at all):

- *mean-scale* (``sum_like = False``): their mean, because their weights are a convex
  combination or follow a preference vector of 1/N (UPGrad, DualProj, MGDA, IMTL-G,
  Aligned-MTL, random loss weighting); taken as they are;
- *sum-scale* (``sum_like = True``): their sum, because they add up one term per task
  with weights that are not normalised to sum to 1 (GradDrop, ConFIG, Nash-MTL, FairGrad);
  divided by N, as pcgrad.py divides the paper's sum, so that AdamW and the 0.25 gradient
  clip see the same scale as the mean-gradient methods.
``tests/test_aggregators.py`` checks that every method returns the mean on such gradients.
(Nash-MTL and FairGrad are not scale-equivariant: for orthogonal gradients of any norms
they return Σ g_i/||g_i||, each task at unit norm.)

**Randomness.** torchjd draws from torch's global generators (GradDrop's thresholds, random
loss weighting's weights). Every call therefore draws a seed from the run's method
generator (``ctx.generator``: seeded from the run's seed, checkpointed) and runs the
aggregator with the global generator of the gradients' device forked and seeded with it,
so runs are reproducible and resume bit-for-bit, and the global generators are untouched.

**Optional dependencies.** Nash-MTL needs cvxpy and ecos (``pip install
"mtrl-bench[nash-mtl]"``); a method whose dependency is missing stops at planning time,
before any data is generated, with one line naming the extra (the aggregator is built once,
for two tasks, in the constructor, which ``plan.plan_run`` calls).
"""

from __future__ import annotations

import torch

from mtrl_bench.errors import UserError
from mtrl_bench.method import GradientContext, Method, register_method

TORCHJD_VERSION = "0.18.0"


def _seeded_call(aggregator, grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``aggregator(grads)`` with the global generators it may draw from (the CPU one and
    that of the gradients' device) forked and seeded from ``generator``."""
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator, device=generator.device))
    device = grads.device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[cuda[0]].manual_seed(seed)
        return aggregator(grads)


class TorchJDAggregator(Method):
    """Adapter: a torchjd aggregator as a gradient-combining method (not registered)."""

    combines_gradients = True
    #: True: the aggregator returns a sum-scale update (see the module doc), divided by N
    sum_like: bool = False
    #: the mtrl-bench extra that installs the aggregator's optional dependencies, if any
    extra: str | None = None

    def __init__(self, update_interval: int = 0, **parameters):
        super().__init__(update_interval)
        self.parameters = parameters
        self._aggregator = None
        self._tasks = 0
        self._pending_state = None
        self._build(2)  # arguments and optional dependencies checked at planning time

    # ------------------------------------------------------------ for subclasses
    def make(self, num_tasks: int):
        """The torchjd aggregator for ``num_tasks`` tasks, from ``self.parameters``."""
        raise NotImplementedError

    def aggregator_state(self, aggregator) -> dict | None:
        """The state a stateful aggregator carries between steps (checkpointed)."""
        return None

    def load_aggregator_state(self, aggregator, state: dict) -> None:
        pass

    # ------------------------------------------------------------ the adapter
    def _build(self, num_tasks: int):
        try:
            return self.make(num_tasks)
        except ImportError as err:
            hint = (f'pip install "mtrl-bench[{self.extra}]"' if self.extra else
                    f'pip install "torchjd=={TORCHJD_VERSION}" with the extra it names')
            message = " ".join(str(err).split())
            raise UserError(f"{self.name} needs an optional dependency of torchjd that is "
                            f"not installed ({message}); {hint}") from None

    def aggregator(self, num_tasks: int):
        """The aggregator of this run, built at the first step (some need N)."""
        if self._aggregator is None or self._tasks != num_tasks:
            self._aggregator, self._tasks = self._build(num_tasks), num_tasks
            if self._pending_state is not None:
                self.load_aggregator_state(self._aggregator, self._pending_state)
                self._pending_state = None
        return self._aggregator

    def combine_gradients(self, ctx: GradientContext) -> torch.Tensor:
        grads = ctx.task_grads
        n = grads.shape[0]
        update = _seeded_call(self.aggregator(n), grads, ctx.generator)
        return update / n if self.sum_like else update

    def state_dict(self) -> dict:
        if self._aggregator is None:
            state = self._pending_state
        else:
            state = self.aggregator_state(self._aggregator)
        return {} if state is None else {"aggregator": state}

    def load_state_dict(self, state: dict) -> None:
        self._pending_state = state.get("aggregator")
        self._aggregator = None


def _projector(norm_eps: float, reg_eps: float):
    from torchjd.linalg import QuadprogProjector

    return QuadprogProjector(norm_eps=norm_eps, reg_eps=reg_eps)


class DualConeAggregator(TorchJDAggregator):
    """Base of the aggregators that project onto the task gradients' dual cone with
    torchjd's quadprog projector (UPGrad, DualProj): one signature, one projector."""

    torchjd_name = ""  # the torchjd.aggregation class

    # The dual-cone projector's numerical safeguards. The Gram matrix G is divided by its trace
    # (sum of squared task-gradient norms) unless the trace is below norm_eps, in which case
    # torchjd replaces G by 0 and the update silently becomes the mean. torchjd's default 1e-4
    # is an absolute threshold on the gradients' scale (task gradients of norm < 0.0045 each
    # on MT5); UPGrad itself is scale-invariant, so norm_eps = 1e-12 here only guards a zero
    # gradient. reg_eps (added to the diagonal of the normalised G) is torchjd's default.
    def __init__(self, update_interval: int = 0, norm_eps: float = 1e-12,
                 reg_eps: float = 1e-4):
        super().__init__(update_interval, norm_eps=norm_eps, reg_eps=reg_eps)

    def make(self, num_tasks):
        from torchjd import aggregation

        return getattr(aggregation, self.torchjd_name)(projector=_projector(**self.parameters))


@register_method("upgrad", role="baseline", order=32)
class UPGrad(DualConeAggregator):
    """UPGrad: task gradients projected onto their dual cone, averaged (Quinton & Rey 2024)."""

    torchjd_name = "UPGrad"


@register_method("dualproj", role="baseline", order=33)
class DualProj(DualConeAggregator):
    """DualProj: the mean gradient projected onto the task gradients' dual cone (GEM eq. 11)."""

    torchjd_name = "DualProj"


@register_method("mgda", role="baseline", order=34)
class MGDA(TorchJDAggregator):
    """MGDA: min-norm point of the task gradients' convex hull (Désidéri 2012; Sener 2018)."""

    # Frank-Wolfe stops when its step size falls below epsilon or after max_iters iterations
    # (torchjd's defaults; Sener & Koltun's code uses 250 iterations and 1e-5, a finer solve).
    def __init__(self, update_interval: int = 0, epsilon: float = 1e-3, max_iters: int = 100):
        super().__init__(update_interval, epsilon=epsilon, max_iters=max_iters)

    def make(self, num_tasks):
        from torchjd.aggregation import MGDA as Aggregator

        return Aggregator(**self.parameters)


@register_method("imtl-g", role="baseline", order=35)
class IMTLG(TorchJDAggregator):
    """IMTL-G: equal projections onto every task gradient's direction (Liu et al. 2021)."""

    def __init__(self, update_interval: int = 0):
        super().__init__(update_interval)

    def make(self, num_tasks):
        from torchjd.aggregation import IMTLG as Aggregator

        return Aggregator()


@register_method("aligned-mtl", role="baseline", order=36)
class AlignedMTL(TorchJDAggregator):
    """Aligned-MTL: task gradients made orthonormal, rescaled (Senushkin et al. 2023)."""

    # The rescaling: "min" = the smallest non-zero eigenvalue (the paper's Algorithm 1 and
    # torchjd's default); the authors' code used "rmse" (the mean eigenvalue), also accepted,
    # as is "median".
    def __init__(self, update_interval: int = 0, scale_mode: str = "min"):
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
        super().__init__(update_interval, scale_mode=scale_mode)

    def make(self, num_tasks):
        from torchjd.aggregation import AlignedMTL as Aggregator

        return Aggregator(**self.parameters)


@register_method("nash-mtl", role="baseline", order=37)
class NashMTL(TorchJDAggregator):
    """Nash-MTL: task weights of the Nash bargaining solution, G·α = 1/α (Navon et al. 2022)."""

    sum_like = True
    extra = "nash-mtl"

    # The authors' defaults (their code's arguments): the update's norm is capped at max_norm
    # (0 = no cap) before the division by N; weights re-solved every update_weights_every
    # steps, with at most optim_niter convex solves each.
    def __init__(self, update_interval: int = 0, max_norm: float = 1.0,
                 update_weights_every: int = 1, optim_niter: int = 20):
        super().__init__(update_interval, max_norm=max_norm,
                         update_weights_every=update_weights_every, optim_niter=optim_niter)

    def make(self, num_tasks):
        import warnings

        from torchjd.aggregation import NashMTL as Aggregator

        # cvxpy says once per process that this problem cannot be re-solved faster (not DPP)
        warnings.filterwarnings("ignore", message="You are solving a parameterized problem "
                                "that is not DPP")
        return Aggregator(n_tasks=num_tasks, **self.parameters)

    def aggregator_state(self, aggregator):
        weighting = aggregator.weighting
        return {"step": float(weighting.step),
                "prvs_alpha": [float(a) for a in weighting.prvs_alpha],
                "normalization_factor": [float(a) for a in weighting.normalization_factor]}

    def load_aggregator_state(self, aggregator, state):
        import numpy as np

        weighting = aggregator.weighting
        weighting.prvs_alpha = np.asarray(state["prvs_alpha"], dtype=np.float64)
        weighting.normalization_factor = np.asarray(state["normalization_factor"])
        weighting.step = state["step"]
        if weighting.step > 0:  # torchjd builds its problem at step 0 only
            weighting._init_optim_problem()


@register_method("graddrop", role="baseline", order=38)
class GradDrop(TorchJDAggregator):
    """GradDrop: per coordinate, keep one sign at random by its purity (Chen et al. 2020)."""

    sum_like = True

    # leak: the share of each task's gradient that always passes (0 = pure GradDrop, the
    # paper's main setting).
    def __init__(self, update_interval: int = 0, leak: float = 0.0):
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"leak must be in [0, 1], got {leak}")
        super().__init__(update_interval, leak=leak)

    def make(self, num_tasks):
        from torchjd.aggregation import GradDrop as Aggregator

        leak = self.parameters["leak"]
        return Aggregator(leak=torch.full((num_tasks,), leak) if leak else None)

    def combine_gradients(self, ctx):
        aggregator = self.aggregator(ctx.task_grads.shape[0])
        if aggregator.leak is not None and aggregator.leak.device != ctx.task_grads.device:
            aggregator.leak = aggregator.leak.to(ctx.task_grads.device)
        return super().combine_gradients(ctx)


@register_method("fairgrad", role="baseline", order=39)
class FairGrad(TorchJDAggregator):
    """FairGrad: α-fair task weights, G·w = w^(−1/α), α = 2 (Ban & Ji 2024)."""

    sum_like = True

    # alpha = 2.0: the authors' Meta-World MT10 script (fairgrad_alpha=2.0); 1 gives
    # proportional fairness (Nash-MTL's fixed point), 0 the mean.
    # None: least_squares' own limit (100 x N evaluations).
    def __init__(self, update_interval: int = 0, alpha: float = 2.0,
                 max_iters: int | None = None):
        super().__init__(update_interval, alpha=alpha, max_iters=max_iters)

    def make(self, num_tasks):
        from torchjd.aggregation import FairGrad as Aggregator

        return Aggregator(**self.parameters)


@register_method("config", role="baseline", order=40)
class ConFIG(TorchJDAggregator):
    """ConFIG: the direction of equal cosine to every task gradient (Liu et al. 2025)."""

    sum_like = True

    def __init__(self, update_interval: int = 0):
        super().__init__(update_interval)

    def make(self, num_tasks):
        from torchjd.aggregation import ConFIG as Aggregator

        return Aggregator()


@register_method("rlw", role="baseline", order=41)
class RandomLossWeighting(TorchJDAggregator):
    """Random loss weighting: weights softmax(z), z ~ N(0, I) every step (Lin et al. 2022)."""

    def __init__(self, update_interval: int = 0):
        super().__init__(update_interval)

    def make(self, num_tasks):
        from torchjd.aggregation import Random as Aggregator

        return Aggregator()
