"""Exact checks of ``bjepa.priors``: densities against their formulas, the shapes a weight
prior's site distribution is normalised to, fusion's output types and the importance-sampling
warning; written to kill mutants the behavioural tests let through (``make mutate``)."""

from __future__ import annotations

import logging
import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from bjepa.priors import (
    EnergyPrior,
    GaussianPrior,
    GoalPrior,
    HorseshoeWeightPrior,
    LaplaceWeightPrior,
    LatentPrior,
    MixturePrior,
    NormalWeightPrior,
    PriorError,
    StandardNormal,
    UnnormalizedDensity,
    WeightPrior,
    fuse,
    make_weight_prior,
)


def test_horseshoe_log_density_is_the_documented_approximation():
    s = 0.7
    prior = HorseshoeWeightPrior(scale=s)
    param = torch.zeros(2, 3)
    d = prior.site_distribution("net.weight", param)
    w = torch.tensor([[0.1, -0.5, 2.0], [1e-3, 0.3, -4.0]])
    want = (torch.log(torch.log1p(2 * s**2 / w**2)) - math.log(s)
            - 0.5 * math.log(2 * math.pi**3)).sum()
    torch.testing.assert_close(d.log_prob(w), want, rtol=1e-6, atol=1e-6)
    assert d.event_shape == (2, 3) and d.batch_shape == ()
    draw = d.sample((500,))
    assert draw.shape == (500, 2, 3) and 0.05 < float(draw.std()) < 0.15  # 0.1 · N(0, 1)
    batch = torch.stack([w, 2 * w])  # a leading sample dim is kept
    assert d.log_prob(batch).shape == (2,)


@pytest.mark.parametrize("prior, ref", [
    (NormalWeightPrior(0.5), lambda p: Normal(0.0, 0.5)),
    (LaplaceWeightPrior(2.0), lambda p: torch.distributions.Laplace(0.0, 2.0))])
def test_elementwise_weight_priors_cover_the_whole_tensor(prior, ref):
    param = torch.randn(3, 4)
    d = prior.site_distribution("layer.weight", param)
    assert d.event_shape == (3, 4) and d.batch_shape == ()
    torch.testing.assert_close(d.log_prob(param), ref(param).log_prob(param).sum())


def test_weight_prior_site_distributions_are_normalised_or_refused():
    param = torch.zeros(2, 3)

    def norm(fn):
        return make_weight_prior(fn).site_distribution("net.weight", param)

    # elementwise torch distribution: expanded, one event, wrapped for Pyro
    d = norm(lambda n, p: torch.distributions.StudentT(3.0))
    assert d.event_shape == (2, 3) and d.batch_shape == () and d.has_rsample
    torch.testing.assert_close(d.log_prob(param + 1.0),
                               torch.distributions.StudentT(3.0).log_prob(
                                   torch.ones(2, 3)).sum())
    assert d.rsample().shape == (2, 3) and d.sample((4,)).shape == (4, 2, 3)
    torch.testing.assert_close(d.mean, torch.zeros(2, 3))
    torch.testing.assert_close(d.variance, torch.full((2, 3), 3.0))
    assert d.support is not None
    # a batch that broadcasts (one value per column)
    d = norm(lambda n, p: Normal(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])))
    assert d.event_shape == (2, 3)
    # a Pyro distribution of the full shape as an event stays as it is
    full = dist.Normal(torch.zeros(2, 3), 1.0).to_event(2)
    assert norm(lambda n, p: full) is full
    # a Pyro elementwise one becomes an event of the parameter's shape
    d = norm(lambda n, p: dist.Normal(0.0, 1.0))
    assert d.event_shape == (2, 3) and d.batch_shape == ()
    # a torch event of the full shape: wrapped, nothing to expand
    mvn = MultivariateNormal(torch.zeros(3), torch.eye(3))
    d = norm(lambda n, p: mvn)
    assert d.event_shape == (2, 3) and d.batch_shape == ()
    with pytest.raises(PriorError, match="event shape"):
        norm(lambda n, p: MultivariateNormal(torch.zeros(4), torch.eye(4)))
    with pytest.raises(PriorError, match="does not broadcast"):
        norm(lambda n, p: Normal(torch.zeros(5), 1.0))
    with pytest.raises(PriorError, match="must return a torch.distributions.Distribution"):
        norm(lambda n, p: 3.0)


def test_weight_prior_selects_by_the_last_name_part():
    w = WeightPrior()
    assert w.selects("net.0.weight") and w.selects("bias")
    assert not w.selects("weight_net.scale")  # only the last component counts
    assert WeightPrior(include=("bias",)).selects("net.bias")
    assert not WeightPrior(include=("bias",)).selects("net.weight")
    with pytest.raises(TypeError, match="include"):
        WeightPrior(include="weight")
    with pytest.raises(NotImplementedError, match="site_dist"):
        WeightPrior().site_dist("w", torch.zeros(1))
    assert make_weight_prior(None) is None and make_weight_prior(w) is w
    assert isinstance(make_weight_prior("laplace"), LaplaceWeightPrior)
    with pytest.raises(ValueError, match="unknown weight_prior"):
        make_weight_prior("cauchy")
    with pytest.raises(TypeError, match="weight_prior"):
        make_weight_prior(3)


def test_latent_prior_densities_match_their_formulas():
    z = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    g = GaussianPrior(2, loc=torch.tensor([1.0, -1.0]), scale=torch.tensor([0.5, 2.0])).double()
    want = Normal(torch.tensor([1.0, -1.0], dtype=torch.float64),
                  torch.tensor([0.5, 2.0], dtype=torch.float64)).log_prob(z).sum(-1)
    torch.testing.assert_close(g.log_prob(z), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.distribution().log_prob(z), want, rtol=1e-5, atol=1e-6)
    sn = StandardNormal(2)
    torch.testing.assert_close(sn.log_prob(z.float()), Normal(0.0, 1.0).log_prob(z.float()).sum(-1),
                               rtol=1e-5, atol=1e-5)
    goal = GoalPrior(torch.tensor([1.0, 2.0]), scale=0.5)
    torch.testing.assert_close(goal.log_prob(z.float()),
                               Normal(torch.tensor([1.0, 2.0]), 0.5).log_prob(z.float()).sum(-1))
    eta = torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    torch.testing.assert_close(goal.log_prob(z.float(), eta),
                               Normal(eta, 0.5).log_prob(z.float()).sum(-1))
    loc, prec = goal.gaussian(eta)
    torch.testing.assert_close(loc, eta)
    torch.testing.assert_close(prec, torch.eye(2).expand(2, 2, 2) * 4.0)
    locs = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    mix = MixturePrior(locs, scales=torch.tensor([[1.0, 1.0], [0.5, 0.5]]),
                       weights=torch.tensor([1.0, 3.0]))
    zf = z.float()
    comp = torch.stack([Normal(locs[0], 1.0).log_prob(zf).sum(-1),
                        Normal(locs[1], 0.5).log_prob(zf).sum(-1)], -1)
    want = torch.logsumexp(comp + torch.log(torch.tensor([0.25, 0.75])), -1)
    torch.testing.assert_close(mix.log_prob(zf), want)
    torch.testing.assert_close(mix.distribution().log_prob(zf), want)
    e = EnergyPrior(2, lambda v: v.pow(2).sum(-1))
    torch.testing.assert_close(e.log_prob(zf), -zf.pow(2).sum(-1))
    assert e.gaussian() is None
    u = e.distribution()
    assert isinstance(u, UnnormalizedDensity) and u.event_shape == (2,)
    torch.testing.assert_close(u.log_prob(zf), -zf.pow(2).sum(-1))
    assert u.expand((5,)).batch_shape == (5,) and u.expand((5,)).event_shape == (2,)


def test_latent_prior_arguments_and_outputs_are_checked():
    with pytest.raises(ValueError, match="scale"):
        GaussianPrior(2, scale=0.0)
    with pytest.raises(ValueError, match="loc"):
        GaussianPrior(2, loc=float("nan"))
    with pytest.raises(ValueError, match="weights"):
        MixturePrior(torch.zeros(2, 2), weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="weights"):
        MixturePrior(torch.zeros(2, 2), weights=torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="scales"):
        MixturePrior(torch.zeros(2, 2), scales=0.0)
    with pytest.raises(TypeError, match="energy"):
        EnergyPrior(2, 3.0)

    class Bad(LatentPrior):
        def __init__(self, out):
            super().__init__(2)
            self.out = out

        def log_prob(self, z, eta=None):
            return self.out(z)

    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="event shape"):
        Bad(lambda z: z.sum(-1)).checked_log_prob(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="shape"):
        Bad(lambda z: z).checked_log_prob(z)
    with pytest.raises(ValueError, match="NaN"):
        Bad(lambda z: torch.full((3,), float("nan"))).checked_log_prob(z)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        Bad(lambda z: torch.full((3,), float("inf"))).checked_log_prob(z)
    minus_inf = Bad(lambda z: torch.full((3,), float("-inf"))).checked_log_prob(z)
    assert torch.isneginf(minus_inf).all()  # zero density is allowed
    with pytest.raises(NotImplementedError, match="log_prob"):
        LatentPrior(2).log_prob(z)


def test_fusion_output_types_and_the_importance_sampling_warning(caplog):
    like = Independent(Normal(torch.zeros(3, 2), torch.ones(3, 2)), 1)
    fused = fuse(like, GaussianPrior(2, scale=2.0))
    assert isinstance(fused, Independent) and fused.batch_shape == (3,)
    torch.testing.assert_close(fused.variance, torch.full((3, 2), 0.8), rtol=1e-5, atol=0)
    full = MultivariateNormal(torch.zeros(3, 2), torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    fused = fuse(full, GaussianPrior(2, scale=2.0))
    assert isinstance(fused, MultivariateNormal)
    want = torch.linalg.inv(torch.linalg.inv(full.covariance_matrix[0]) + 0.25 * torch.eye(2))
    torch.testing.assert_close(fused.covariance_matrix[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="LatentPrior"):
        fuse(like, "goal")
    with pytest.raises(ValueError, match="event shape"):
        fuse(like, GaussianPrior(3))

    class Inf(GaussianPrior):
        def gaussian(self, eta=None):
            return self.loc, torch.full((2, 2), float("inf"))

    with pytest.raises(ValueError, match="non-finite"):
        fuse(like, Inf(2))
    # importance sampling: a far prior collapses the effective sample size and warns
    torch.manual_seed(0)
    far = EnergyPrior(2, lambda z: 50.0 * (z - 4.0).pow(2).sum(-1))
    with caplog.at_level(logging.WARNING, logger="bjepa.priors"):
        d = fuse(like, far, num_samples=400)
    assert (d.ess < 20).all()
    assert any("effective sample size" in r.message for r in caplog.records)
    caplog.clear()
    near = EnergyPrior(2, lambda z: 0.01 * z.pow(2).sum(-1))
    with caplog.at_level(logging.WARNING, logger="bjepa.priors"):
        d = fuse(like, near, num_samples=400)
    assert (d.ess > 350).all() and not caplog.records
    with pytest.raises(ValueError, match="num_samples"):
        fuse(like, near, num_samples=0)


@pytest.mark.parametrize("s", [0.25, 1.5])
def test_gaussian_prior_scale_is_softplus_plus_a_small_floor(s):
    prior = GaussianPrior(2, scale=s).double()
    torch.testing.assert_close(prior.scale, torch.full((2,), s + 1e-6, dtype=torch.float64),
                               rtol=0, atol=4e-7)


def test_prior_defaults_and_weight_checks():
    fixed = GaussianPrior(2)
    assert fixed.learnable is False and list(fixed.parameters()) == []
    assert len(list(GaussianPrior(2, learnable=True).parameters())) == 2
    with pytest.raises(ValueError, match="weights"):
        MixturePrior(torch.zeros(2, 2), weights=torch.tensor([2.0, -1.0]))  # positive sum
    with pytest.raises(ValueError, match="weights"):
        MixturePrior(torch.zeros(2, 2), weights=torch.tensor([1.0, 1.0, 1.0]))


def test_priors_with_star_arguments_save_and_rebuild():
    from bjepa.priors import build_prior, prior_spec, register_prior

    @register_prior("test_star_prior")
    class StarPrior(LatentPrior):
        def __init__(self, *centres):
            super().__init__(len(centres))
            self.register_buffer("centres", torch.tensor(centres))

        def log_prob(self, z, eta=None):
            return -(z - self.centres).pow(2).sum(-1)

    spec = prior_spec(StarPrior(1.0, 2.0))
    assert spec["args"] == {"*centres": [1.0, 2.0]} and spec["name"] == "test_star_prior"
    rebuilt = build_prior(spec)
    torch.testing.assert_close(rebuilt.centres, torch.tensor([1.0, 2.0]))


def test_a_full_covariance_prediction_stays_full_covariance_after_fusion():
    like = MultivariateNormal(torch.zeros(3, 2), torch.eye(2))  # diagonal, but an MVN
    fused = fuse(like, GaussianPrior(2, scale=2.0))
    assert isinstance(fused, MultivariateNormal)
    torch.testing.assert_close(fused.covariance_matrix[0], 0.8 * torch.eye(2), rtol=1e-5,
                               atol=1e-6)
