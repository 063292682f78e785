"""The torchjd gradient-combination family (methods/aggregators.py): the adapter's scale,
seeding, state and errors; each method against a property its paper defines; torchjd's
PCGrad and CAGrad cross-checked against ours on the same gradient matrices; a tiny real
run of every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mtrl_bench.methods.aggregators import TorchJDAggregator
from mtrl_bench.methods.cagrad import cagrad_direction
from mtrl_bench.methods.pcgrad import pcgrad_coefficients

from mtrl_bench.errors import UserError
from mtrl_bench.method import GradientContext, build_method, registered_methods
from mtrl_bench.plan import plan_run
from mtrl_bench.runs.runner import run_dir_of

AGGREGATORS = [name for name, cls in registered_methods().items()
               if issubclass(cls, TorchJDAggregator)]
STOCHASTIC = ["graddrop", "rlw"]


def _combine(method, grads, seed=0):
    if isinstance(method, str):
        method = build_method(method)
    generator = torch.Generator().manual_seed(seed)
    return method.combine_gradients(GradientContext(0, 10, grads, torch.ones(len(grads)),
                                                    generator))


def test_every_family_member_is_registered_as_a_baseline():
    assert set(AGGREGATORS) >= {"upgrad", "mgda", "nash-mtl", "imtl-g", "aligned-mtl",
                                "dualproj", "graddrop", "fairgrad", "config", "rlw"}
    from mtrl_bench.method import method_role

    assert all(method_role(name).role == "baseline" for name in AGGREGATORS)


@pytest.mark.parametrize("name", AGGREGATORS)
@pytest.mark.parametrize("n", [2, 5])
def test_no_conflict_gives_the_mean_scale(name, n):
    """N orthonormal task gradients (no conflict): every method steps on their mean, the
    scale every method here steps at (sum-scale aggregators are divided by N); random loss
    weighting on a convex combination of them. (Nash-MTL without its norm cap of 1, which
    the sum of N unit vectors exceeds.)"""
    grads = torch.eye(n, 3 * n, dtype=torch.float32)
    out = _combine(build_method(name, **({"max_norm": 0.0} if name == "nash-mtl" else {})),
                   grads)
    if name == "rlw":
        assert torch.isclose(out.sum(), torch.tensor(1.0)) and (out[:n] > 0).all()
    else:
        torch.testing.assert_close(out, grads.mean(0), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_seeded_from_the_method_generator_and_the_global_generator_untouched(name):
    grads = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, again = _combine(name, grads, seed=7), _combine(name, grads, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    if name in STOCHASTIC:
        assert not torch.equal(first, _combine(name, grads, seed=8))


def test_random_loss_weighting_draws_softmax_of_a_normal_from_the_run_seed():
    grads = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    out = _combine("rlw", grads, seed=11)
    seed = int(torch.randint(0, 2 ** 62, (), generator=torch.Generator().manual_seed(11)))
    weights = torch.softmax(torch.randn(4, generator=torch.Generator().manual_seed(seed)), 0)
    torch.testing.assert_close(out, weights @ grads)


def test_graddrop_keeps_one_sign_per_coordinate():
    """Chen et al. 2020: where all tasks agree in sign nothing is dropped (the mean after the
    division by N); elsewhere each coordinate keeps only positive or only negative parts."""
    agree = torch.rand(3, 20, generator=torch.Generator().manual_seed(0)) + 0.1
    torch.testing.assert_close(_combine("graddrop", agree), agree.mean(0))
    mixed = torch.randn(6, 200, generator=torch.Generator().manual_seed(1))
    out = _combine("graddrop", mixed) * 6
    positive, negative = mixed.clamp(min=0).sum(0), mixed.clamp(max=0).sum(0)
    kept_positive = torch.isclose(out, positive, atol=1e-6)
    kept_negative = torch.isclose(out, negative, atol=1e-6)
    assert (kept_positive | kept_negative).all() and kept_positive.any() and kept_negative.any()


def _rand(n, p, seed):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_mgda_is_the_minimum_norm_point_of_two_gradients():
    """Sener & Koltun 2018, eq. for two tasks: γ = clip((g2 − g1)·g2 / ||g1 − g2||², 0, 1)."""
    g = _rand(2, 15, 3)
    g[1] = -0.5 * g[0] + 0.3 * g[1]
    gamma = float(((g[1] - g[0]) @ g[1]) / (g[0] - g[1]).norm() ** 2)
    expected = gamma * g[0] + (1 - gamma) * g[1]
    out = _combine(build_method("mgda", epsilon=1e-9, max_iters=10000), g.float())
    torch.testing.assert_close(out, expected.float(), rtol=1e-3, atol=1e-4)


def test_upgrad_and_dualproj_never_conflict_and_keep_the_mean_without_conflict():
    g = _rand(4, 30, 4)
    g[1] = -0.9 * g[0] + 0.2 * g[1]
    for name in ("upgrad", "dualproj"):  # in the dual cone: no task's loss goes up, up to
        out = _combine(name, g.float()).double()  # reg_eps = 1e-4 on the normalised Gram
        cosines = g @ out / (g.norm(dim=1) * out.norm())
        assert (cosines >= -1e-3).all(), (name, cosines)
    aligned = _rand(3, 30, 5).abs()  # pairwise non-negative: no projection
    for name in ("upgrad", "dualproj"):
        torch.testing.assert_close(_combine(name, aligned.float()), aligned.float().mean(0),
                                   rtol=1e-3, atol=1e-5)


def test_imtl_g_and_config_project_equally_on_every_task():
    g = _rand(3, 20, 6)
    g[1] = -0.6 * g[0] + 0.5 * g[1]
    units = g / g.norm(dim=1, keepdim=True)
    for name in ("imtl-g", "config"):
        out = _combine(name, g.float()).double()
        cosines = units @ out / out.norm()
        assert cosines.max() - cosines.min() < 1e-4 * cosines.abs().max(), (name, cosines)


def test_fairgrad_weights_solve_its_fixed_point():
    """Ban & Ji 2024, eq. 4: G w = w^(−1/α); the update is (w @ g) / N here."""
    g = _rand(3, 12, 7)
    g[2] = -0.3 * g[0] + g[2]
    out = _combine(build_method("fairgrad", alpha=2.0), g.float()).double() * 3
    w = torch.linalg.lstsq(g.T, out.unsqueeze(1)).solution.squeeze(1)  # g has full row rank
    torch.testing.assert_close(g @ g.T @ w, w ** -0.5, rtol=1e-3, atol=1e-4)


def test_nash_mtl_state_resumes_exactly(tmp_path):
    """Nash-MTL keeps its last weights between steps: a method restored from a checkpoint
    mid-way continues exactly as one that never stopped."""
    matrices = [_rand(3, 16, s).float() for s in range(4)]
    straight = build_method("nash-mtl")
    expected = [_combine(straight, m) for m in matrices]
    first = build_method("nash-mtl")
    for m in matrices[:2]:
        _combine(first, m)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = build_method("nash-mtl")
    resumed.load_state_dict(torch.load(tmp_path / "state.pt"))
    assert resumed.state_dict() == first.state_dict()  # before the aggregator is rebuilt
    for m, e in zip(matrices[2:], expected[2:]):
        torch.testing.assert_close(_combine(resumed, m), e, rtol=1e-6, atol=1e-7)


def test_a_missing_optional_dependency_is_one_line_at_planning_time(monkeypatch, tmp_path,
                                                                     capsys):
    import torchjd._mixins

    real = torchjd._mixins.find_spec
    monkeypatch.setattr(torchjd._mixins, "find_spec",
                        lambda name: None if name == "ecos" else real(name))
    with pytest.raises(UserError, match=r'nash-mtl needs .*ecos.*pip install '
                                        r'"mtrl-bench\[nash-mtl\]"') as err:
        plan_run("nash-mtl", "tiny")
    assert "\n" not in str(err.value)
    from mtrl_bench.cli import main

    data = tmp_path / "data"
    code = main(["run", "--method", "nash-mtl", "--preset", "tiny", "--no-progress",
                 "--data-dir", str(data), "--results-dir", str(tmp_path / "r")])
    err_text = capsys.readouterr().err.strip()
    assert code == 2 and len(err_text.splitlines()) == 1 and "mtrl-bench[nash-mtl]" in err_text
    assert not data.exists()  # refused before any data was generated


def test_parameters_are_checked_and_enter_the_identity():
    with pytest.raises(UserError, match="scale_mode"):
        plan_run("aligned-mtl", "tiny", bindings=['aligned_mtl.scale_mode = "max"'])
    base = plan_run("fairgrad", "tiny").identity["method"]
    assert base["alpha"] == 2.0 and base["max_iters"] is None
    other = plan_run("fairgrad", "tiny", bindings=["fairgrad.alpha = 1"]).identity["method"]
    assert other["alpha"] == 1.0


# ------------------------------------------------------------------ torchjd vs ours


def _matrices():
    """The cases the cross-check covers, (name, (N, P) float32 gradients)."""
    rng = np.random.default_rng(0)
    random = rng.normal(size=(4, 40))
    conflicting = rng.normal(size=(4, 40))
    conflicting[1] = -0.8 * conflicting[0] + 0.1 * conflicting[1]
    conflicting[3] = -0.5 * conflicting[2] + 0.2 * conflicting[3]
    aligned = np.abs(rng.normal(size=(4, 40))) + 0.5
    rank_deficient = rng.normal(size=(2, 40))
    rank_deficient = np.stack([rank_deficient[0], rank_deficient[1],
                               rank_deficient[0] - 2 * rank_deficient[1],
                               -rank_deficient[0]])
    one_zero = rng.normal(size=(4, 40))
    one_zero[2] = 0.0
    cases = dict(random=random, conflicting=conflicting, aligned=aligned,
                 rank_deficient=rank_deficient, one_task_zero=one_zero)
    return [(k, torch.tensor(v, dtype=torch.float32)) for k, v in cases.items()]


@pytest.mark.parametrize("case,grads", _matrices())
def test_torchjd_pcgrad_equals_ours(case, grads):
    """Same algorithm (Yu et al. 2020, Algorithm 1) on the Gram matrix in both: with the
    orders torchjd draws (torch.randperm per task, skipping the task itself) ours gives the
    same update; torchjd returns the sum of the projected gradients, ours their mean."""
    from torchjd.aggregation import PCGrad as TorchJDPCGrad

    n = len(grads)
    torch.manual_seed(5)
    orders = [[j for j in torch.randperm(n).tolist() if j != i] for i in range(n)]
    torch.manual_seed(5)
    theirs = TorchJDPCGrad()(grads) / n
    coefficients = pcgrad_coefficients((grads @ grads.T).double().numpy(), orders)
    ours = torch.tensor((1 - coefficients.sum(0)) / n, dtype=torch.float32) @ grads
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5 * float(grads.abs().max()))


@pytest.mark.parametrize("case,grads", _matrices())
def test_torchjd_cagrad_equals_ours_without_the_rescale(case, grads):
    """torchjd's CAGrad solves the same dual (Liu et al. 2021, eq. 2) with CLARABEL, in
    coordinates from the SVD of the trace-normalised Gram matrix, and returns
    d = g0 + c·||g0||/||g_w||·g_w without the authors' division by 1 + c² (their
    ``rescale``): equal to ours with rescale=False within the solvers' tolerance."""
    from torchjd.aggregation import CAGrad as TorchJDCAGrad

    theirs = TorchJDCAGrad(c=0.4)(grads)
    ours, gap = cagrad_direction(grads, 0.4, rescale=False)
    if case == "one_task_zero":
        # The dual's minimum is then w = that task (g_w = 0, d undefined). torchjd returns no
        # update at all ("on the Pareto front"); ours gives the zero task weight 0, i.e.
        # CAGrad of the other tasks around the mean of all (README, "What is compared").
        assert torch.count_nonzero(theirs) == 0 and float(ours @ grads.mean(0)) > 0
        return
    assert gap < 1e-5
    scale = float(grads.mean(0).norm()) + 1e-12
    assert float((theirs - ours).norm()) / scale < 2e-3, case


def test_torchjd_cagrad_stops_below_its_absolute_gradient_threshold():
    """The difference that matters: torchjd zeroes a Gram matrix whose trace is below its
    norm_eps (1e-4, absolute), so small gradients get no update at all; ours is
    scale-invariant (README, "What is compared")."""
    from torchjd.aggregation import CAGrad as TorchJDCAGrad

    grads = _matrices()[1][1] * 1e-4  # conflicting, Σ||g_i||² ≈ 1.6e-6
    assert torch.count_nonzero(TorchJDCAGrad(c=0.4)(grads)) == 0
    ours = cagrad_direction(grads, 0.4, rescale=False)[0]
    torch.testing.assert_close(ours * 1e4, cagrad_direction(grads * 1e4, 0.4, rescale=False)[0],
                               rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ tiny real runs


@pytest.mark.slow
@pytest.mark.parametrize("name", AGGREGATORS)
def test_each_method_runs_on_the_tiny_preset(name, tmp_path_factory):
    import json

    from mtrl_bench.cli import main

    root = tmp_path_factory.getbasetemp() / "aggregator-runs"
    code = main(["run", "--method", name, "--preset", "tiny", "--no-progress",
                 "--data-dir", str(root / "data"), "--results-dir", str(root / "results"),
                 "--gin_binding", "Run.budget_sequences = 96"])
    assert code == 0
    path = run_dir_of(plan_run(name, "tiny", bindings=["Run.budget_sequences = 96"],
                    results=str(root / "results")))
    final = json.loads((path / "final.json").read_text())
    assert set(final["final"]["success"]) == set(final["tasks"])
