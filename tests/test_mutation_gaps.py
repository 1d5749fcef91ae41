"""Tests that catch plausible bugs a mutation audit planted and the suite missed.

Each test is named for the behaviour it pins, and each was checked to fail with the bug planted
(see docs/testing.md): the τ schedule applied one step late, a Gaussian prior's precision
taken as 1/σ, NumPy and Python random streams not restored on resume, replicas reporting their
final loss with another replica's seed, ``coverage()`` dividing by N + 1, a looser calibration
verdict, and VJEPA's target mean computed with gradient.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from bjepa.diagnostics.calibration import calibrate, coverage, pit
from bjepa.inference import fit
from bjepa.inference.checkpoint import (
    TrainingState,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from bjepa.models import BJEPA, VJEPA
from bjepa.models.ema import cosine_tau
from bjepa.priors import GaussianPrior, fuse, fuse_gaussian


def _walk(n: int = 121, d: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64).cumsum(0) / 5.0)


# -- the EMA target under a τ schedule, through the trainer ---------------------------------------
def test_trainer_ema_target_equals_hand_rolled_ema_under_cosine_tau_step_by_step():
    """After optimiser step ``s`` the target is ``τ(s) θ'_{s−1} + (1 − τ(s)) θ_s`` with
    ``τ(s)`` the schedule at step ``s`` — not at ``s + 1``. A 0 → 1 cosine over six steps makes
    every step's τ differ from its neighbours' by ≥ 0.09."""
    x = _walk()
    steps = 6
    torch.manual_seed(0)
    m = VJEPA(5, 2, tau="cosine:0.0:1.0", init="random").double()
    prev = [p.detach().clone() for p in m.target_encoder.parameters()]
    for a, b in zip(prev, m.context_encoder.parameters(), strict=True):
        assert torch.equal(a, b.detach())  # the target starts as a copy of the encoder
    seen = []

    def snapshot(step, record):
        seen.append((step, record["tau"],
                     [p.detach().clone() for p in m.context_encoder.parameters()],
                     [p.detach().clone() for p in m.target_encoder.parameters()]))
        return False

    fit(m, x[:-1], x[1:], steps=steps, lr=0.05, seed=0, log_every=1, progress=False,
        callback=snapshot)
    schedule = cosine_tau(0.0, 1.0)
    assert [s for s, *_ in seen] == list(range(steps))
    for step, tau_logged, online, target in seen:
        tau = schedule(step, steps)
        assert tau_logged == pytest.approx(tau, abs=1e-15)
        for t, p, o in zip(target, prev, online, strict=True):
            torch.testing.assert_close(t, tau * p + (1.0 - tau) * o, rtol=0, atol=1e-13)
        prev = target
    # the online encoder really moved, so a wrong τ would show
    assert max((o - t).abs().max().item() for o, t in zip(seen[2][2], seen[0][2],
                                                            strict=True)) > 1e-3


# -- Gaussian priors at σ ≠ 1 ---------------------------------------------------------------------
def _closed_form(loc_l, sd_l, loc_p, sd_p):
    prec = sd_l.pow(-2) + sd_p.pow(-2)
    return (loc_l * sd_l.pow(-2) + loc_p * sd_p.pow(-2)) / prec, prec.reciprocal()


def test_gaussian_prior_precision_is_one_over_sigma_squared_in_fusion():
    sd_p = torch.tensor([0.25, 3.0, 1.5], dtype=torch.float64)
    loc_p = torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64)
    prior = GaussianPrior(3, loc=loc_p, scale=sd_p).double()
    torch.testing.assert_close(prior.scale, sd_p, rtol=1e-5, atol=0)
    loc, prec = prior.gaussian()
    torch.testing.assert_close(prec, torch.diag(prior.scale.pow(-2)), rtol=1e-12, atol=0)
    torch.testing.assert_close(prior.log_prob(loc_p[None] + sd_p),  # one σ off in every dim
                               -(torch.log(sd_p).sum() + 1.5 * math.log(2 * math.pi) + 1.5)[None],
                               rtol=1e-5, atol=0)
    loc_l = torch.tensor([[0.3, -1.0, 2.0], [0.0, 4.0, -3.0]], dtype=torch.float64)
    sd_l = torch.tensor([[0.5, 2.0, 1.5], [0.1, 0.7, 4.0]], dtype=torch.float64)
    fused = fuse(dist.Normal(loc_l, sd_l).to_event(1), prior)
    mean, var = _closed_form(loc_l, sd_l, loc_p, prior.scale.detach())
    torch.testing.assert_close(fused.mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.variance, var, rtol=1e-10, atol=1e-12)
    # the same through a full-covariance predictive
    mvn = dist.MultivariateNormal(loc_l, covariance_matrix=torch.diag_embed(sd_l.pow(2)))
    torch.testing.assert_close(fuse(mvn, prior).mean, mean, rtol=1e-9, atol=1e-12)


def test_fuse_gaussian_is_the_product_of_two_gaussians():
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([[0.3, 0.0], [0.0, 4.0]], dtype=torch.float64)
    ma, mb = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([0.0, 3.0],
                                                                         dtype=torch.float64)
    loc, cov = fuse_gaussian(ma, a, mb, b)
    torch.testing.assert_close(cov, torch.linalg.inv(a + b), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loc, torch.linalg.solve(a + b, a @ ma + b @ mb), rtol=1e-12,
                               atol=1e-14)


def test_trained_bjepa_structural_prior_fuses_by_its_learned_precision():
    """BJEPA's default structural prior is a learnable Gaussian; after training its σ is far
    from 1, and fusing a prediction with it must use 1/σ² (the closed form)."""
    x = _walk(201, 6, seed=1)
    torch.manual_seed(0)
    m = BJEPA(6, 3, gamma=1.0).double()
    fit(m, x[:-1], x[1:], steps=60, lr=3e-2, seed=0, progress=False)
    sd_p = m.struct_prior.scale.detach()
    assert (sd_p - 1.0).abs().max() > 0.1, sd_p  # trained away from the σ = 1 start
    like = m.predict(x[:20])
    fused = m.predict(x[:20], prior=m.struct_prior)
    mean, var = _closed_form(like.mean, like.stddev, m.struct_prior.loc.detach(), sd_p)
    torch.testing.assert_close(fused.mean, mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fused.variance, var, rtol=1e-9, atol=1e-12)


# -- random number generators: checkpoint and resume ----------------------------------------------
def _draws() -> tuple:
    return (random.random(), random.gauss(0.0, 1.0), np.random.rand(3).tolist(),
            float(np.random.randn()), torch.rand(3).tolist(),
            pyro.sample("x", dist.Normal(0.0, 1.0)).item())


def _scramble() -> None:
    random.seed(987)
    np.random.seed(987)
    torch.manual_seed(987)


@pytest.mark.parametrize("through_file", [False, True])
def test_rng_round_trip_restores_python_numpy_torch_and_pyro(through_file, tmp_path):
    """Every generator the checkpoint claims to restore, including the half-used Gaussian
    pairs that Python's ``random.gauss`` and NumPy's ``randn`` cache."""
    pyro.set_rng_seed(5)
    random.gauss(0.0, 1.0)  # leaves a cached second value in Python's generator
    np.random.randn()       # ... and in NumPy's legacy generator
    state = capture_rng_state()
    assert state["numpy"]["has_gauss"] == 1 and state["python"]["gauss_next"] is not None
    expected = _draws()
    _scramble()
    assert _draws() != expected
    if through_file:
        m = VJEPA(3, 2)
        path = save_checkpoint(tmp_path / "c.pt", m, training=TrainingState(
            step=1, optimizer={}, rng=state, config={}, history={}))
        state = load_checkpoint(path)["training"]["rng"]  # weights-only, checksummed
    restore_rng_state(state)
    assert _draws() == expected


def test_resume_continues_python_and_numpy_random_streams(tmp_path):
    """A callback that draws from Python's, NumPy's and torch's generators at every step sees
    the same numbers in an interrupted-and-resumed run as in an uninterrupted one."""
    x = _walk(61, 4)

    def run(folder, stop_at=None, resume=False):
        draws = {}

        def callback(step, record):
            draws[step] = (random.random(), float(np.random.rand()), float(torch.rand(())),
                           record["loss"])
            return stop_at is not None and step >= stop_at

        torch.manual_seed(0)
        m = VJEPA(4, 2, init="random").double()
        fit(m, x[:-1], x[1:], steps=6, lr=1e-2, seed=0, log_every=1, progress=False,
            checkpoint_dir=folder, checkpoint_every=1, resume=resume, callback=callback)
        return draws

    reference = run(tmp_path / "ref")
    first = run(tmp_path / "run", stop_at=2)
    assert sorted(first) == [0, 1, 2]
    _scramble()  # a new process would start from other states
    second = run(tmp_path / "run", resume=True)
    assert sorted(second) == [3, 4, 5]
    assert {**first, **second} == reference


# -- replicas report their own final loss ---------------------------------------------------------
def test_replicas_report_final_loss_with_their_own_seed():
    """Each replica's final loss depends on its own parameters and seed only: listing the same
    three replicas in another order gives each the same final loss (with the first replica's
    seed used for all, every loss would change with the order)."""
    from bjepa.data import noisy_tv
    from bjepa.inference.fit import set_seed

    seeds, sigmas = [3, 1, 4], [0.0, 2.0, 8.0]
    splits = [noisy_tv.make_split(s, sd, train_steps=200, test_steps=20)[0]
              for s, sd in zip(sigmas, seeds, strict=True)]
    ctx = [d.obs[:-1].double() for d in splits]
    tgt = [d.obs[1:].double() for d in splits]

    def run(order):
        models = []
        for i in order:
            set_seed(seeds[i])
            models.append(VJEPA(20, 4).double())
        hists = fit(models, [ctx[i] for i in order], [tgt[i] for i in order], steps=20,
                    lr=1e-2, seed=[seeds[i] for i in order], batch_size=64, progress=False)
        return {i: h.final_loss for i, h in zip(order, hists, strict=True)}

    a, b = run([0, 1, 2]), run([2, 0, 1])
    for i in range(3):
        assert a[i] == pytest.approx(b[i], rel=1e-9, abs=0), (i, a, b)
    assert len(set(a.values())) == 3


# -- coverage and PIT: exact small cases ----------------------------------------------------------
def test_coverage_is_the_share_of_rows_inside_each_central_interval():
    pit_values = torch.tensor([[0.50, 0.04], [0.05, 0.90], [0.95, 0.74], [0.30, 0.76]],
                              dtype=torch.float64)
    got = coverage(pit_values, [0.5, 0.9])
    # 50 %: |F − ½| ≤ 0.25 → rows 0, 3 in dim 0; row 2 only in dim 1 (0.74 in, 0.76 out)
    # 90 %: |F − ½| ≤ 0.45 → every row in dim 0 (0.05 and 0.95 on the edge); in dim 1 all but
    # row 0 (0.04 is 0.46 from the median)
    want = torch.tensor([[2 / 4, 1 / 4], [4 / 4, 3 / 4]], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert coverage(torch.full((7, 1), 0.5), [0.1]).item() == 1.0
    assert coverage(torch.tensor([[0.0], [1.0], [0.5]]), [0.99]).item() == pytest.approx(1 / 3)


def test_pit_is_the_predictive_cdf_at_the_observation():
    loc = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    scale = torch.tensor([[1.0, 2.0], [0.5, 1.0], [3.0, 0.25]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1.0], [1.0, 0.0], [-2.5, 0.0]], dtype=torch.float64)
    got = pit(dist.Normal(loc, scale).to_event(1), y)
    want = 0.5 * (1 + torch.erf((y - loc) / (scale * math.sqrt(2))))
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-12)
    # from draws: the share of draws at or below the observation
    draws = torch.arange(1.0, 11.0).reshape(10, 1, 1).expand(10, 3, 2)
    y2 = torch.tensor([[0.5, 3.0], [5.0, 10.0], [7.5, 11.0]])
    got2 = pit(draws, y2)
    want2 = torch.tensor([[0.0, 0.3], [0.5, 1.0], [0.7, 1.0]], dtype=got2.dtype)
    assert ((got2 - want2).abs() <= 0.1 + 1e-9).all(), got2  # within one draw's mass


# -- the calibration verdict at 10–20 % miscalibration --------------------------------------------
_N = 20000


def _normal_grid(n: int = _N) -> torch.Tensor:
    """Exact standard-normal quantiles: observations whose PIT under N(0, 1) is uniform."""
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.special.ndtri(u)[:, None]


@pytest.mark.parametrize("spread,verdict", [
    (1.0, "calibrated"), (0.97, "calibrated"), (1.03, "calibrated"),
    (0.85, "overconfident"), (0.9, "overconfident"),
    (1.15, "underconfident"), (1.2, "underconfident")])
def test_calibration_verdict_flags_ten_to_twenty_percent_spread_errors(spread, verdict):
    """Observations N(0, 1) on an exact quantile grid, forecasts N(0, spread²): 10–20 % too
    narrow or too wide is flagged, 3 % is not. The allowance is the documented tolerance plus
    three binomial standard errors."""
    y = _normal_grid()
    predictive = dist.Normal(torch.zeros(_N, 1, dtype=torch.float64),
                             torch.full((_N, 1), spread, dtype=torch.float64)).to_event(1)
    report = calibrate(predictive, y)
    assert report.verdict == verdict, report.reasons
    levels = torch.tensor(report.levels, dtype=torch.float64)
    allowed = 0.03 + 3.0 * torch.sqrt(levels * (1 - levels) / _N)
    torch.testing.assert_close(torch.tensor(report.allowed_deviation, dtype=torch.float64),
                               allowed, rtol=1e-12, atol=0)
    # coverage of the grid: the normal-theory value to within one row
    z = torch.special.ndtri(0.5 + levels / 2)
    theory = torch.erf(z * spread / math.sqrt(2))
    torch.testing.assert_close(torch.tensor(report.coverage, dtype=torch.float64), theory,
                               rtol=0, atol=2.0 / _N)


def test_calibration_tolerance_argument_moves_the_verdict():
    y = _normal_grid()
    narrow = dist.Normal(torch.zeros(_N, 1), torch.full((_N, 1), 0.9)).to_event(1)
    assert calibrate(narrow, y).verdict == "overconfident"
    assert calibrate(narrow, y, tolerance=0.09).verdict == "calibrated"


# -- VJEPA's target mean is a stop-gradient EMA ---------------------------------------------------
def test_vjepa_target_mean_is_the_stop_gradient_ema_not_the_online_encoder():
    torch.manual_seed(0)
    m = VJEPA(5, 2, init="random")
    with torch.no_grad():  # make the online encoder differ from its EMA copy
        for p in m.context_encoder.parameters():
            p.add_(0.5)
    xt = torch.randn(7, 5)
    q = m.target_dist(xt)
    assert not q.mean.requires_grad
    torch.testing.assert_close(q.mean, m.target_encoder(xt), rtol=0, atol=0)
    assert (q.mean - m.context_encoder(xt)).abs().max() > 0.1
    # the ELBO's gradient reaches the context encoder only through the predictor's input: the
    # same loss with the target side fed through ``torch.no_grad`` by hand has the same gradient
    xc = torch.randn(7, 5)
    guide_tr = pyro.poutine.trace(m.guide).get_trace(xc, xt)
    loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(
        pyro.poutine.replay(m.model, trace=guide_tr), pyro.poutine.replay(m.guide, guide_tr),
        xc, xt)
    (grad,) = torch.autograd.grad(loss, [m.context_encoder.weight])
    z_t = guide_tr.nodes["z_target"]["value"].detach()
    nll = -m.predictive_dist(xc).log_prob(z_t).sum()
    (want,) = torch.autograd.grad(nll, [m.context_encoder.weight])
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)
