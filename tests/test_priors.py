"""Priors and product-of-experts fusion against closed forms."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from bjepa.priors import (
    EnergyPrior,
    GaussianPrior,
    GoalPrior,
    LatentPrior,
    MixturePrior,
    StandardNormal,
    fuse,
    make_weight_prior,
)


def test_gaussian_fusion_equals_closed_form_full_cov():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 3, generator=g)
    cov_l = A @ A.T + 0.5 * torch.eye(3)
    mu_l = torch.randn(3, generator=g)
    like = dist.MultivariateNormal(mu_l[None], covariance_matrix=cov_l[None])
    goal = torch.randn(3, generator=g)
    out = fuse(like, GoalPrior(goal, scale=0.7))
    prec = torch.linalg.inv(cov_l) + torch.eye(3) / 0.49
    cov = torch.linalg.inv(prec)
    mu = cov @ (torch.linalg.inv(cov_l) @ mu_l + goal / 0.49)
    torch.testing.assert_close(out.mean[0], mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.covariance_matrix[0], cov, rtol=1e-4, atol=1e-5)


def test_diagonal_fusion_stays_diagonal_and_matches_1d_formula():
    like = dist.Normal(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 2.0]])).to_event(1)
    out = fuse(like, GaussianPrior(2, loc=torch.tensor([3.0, 0.0]), scale=1.0))
    assert isinstance(out.base_dist, Normal)
    var = 1 / (1 / torch.tensor([0.25, 4.0]) + 1)
    mean = var * (torch.tensor([1.0, -2.0]) / torch.tensor([0.25, 4.0]) + torch.tensor([3., 0.]))
    torch.testing.assert_close(out.mean[0], mean)
    torch.testing.assert_close(out.variance[0], var)


def test_flat_prior_returns_likelihood():
    like = dist.Normal(torch.randn(4, 2), torch.rand(4, 2) + 0.1).to_event(1)
    out = fuse(like, GaussianPrior(2, scale=1e6))
    torch.testing.assert_close(out.mean, like.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.variance, like.variance, rtol=1e-4, atol=1e-6)


def test_importance_fusion_matches_closed_form_for_gaussian_energy():
    torch.manual_seed(0)
    like = dist.Normal(torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 0.8]])).to_event(1)
    goal, s = torch.tensor([1.5, 0.5]), 0.9
    closed = fuse(like, GoalPrior(goal, s))
    energy = EnergyPrior(2, lambda z: 0.5 * ((z - goal) / s).pow(2).sum(-1))
    S = 20000
    mc = fuse(like, energy, num_samples=S)
    ess = float(mc.ess[0])
    assert 0.2 * S < ess <= S
    # Monte Carlo error of a self-normalised mean: ~ sd / sqrt(ESS); allow 4 standard errors
    tol = 4 * closed.stddev[0] / math.sqrt(ess)
    assert ((mc.mean[0] - closed.mean[0]).abs() < tol).all()
    assert ((mc.variance[0] / closed.variance[0]) - 1).abs().max() < 0.1


def test_mixture_prior_and_energy_log_prob():
    m = MixturePrior(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), 0.5)
    z = torch.zeros(3, 2)
    expected = torch.logsumexp(torch.stack([
        Normal(torch.tensor([-1.0, 0.0]), 0.5).log_prob(z).sum(-1) + math.log(0.5),
        Normal(torch.tensor([1.0, 0.0]), 0.5).log_prob(z).sum(-1) + math.log(0.5)]), 0)
    torch.testing.assert_close(m.log_prob(z), expected)
    torch.testing.assert_close(StandardNormal(2).log_prob(z),
                               MultivariateNormal(torch.zeros(2), torch.eye(2)).log_prob(z))


def test_custom_prior_in_a_few_lines():
    class StudentT(LatentPrior):
        def log_prob(self, z, eta=None):
            return torch.distributions.StudentT(3.0).log_prob(z).sum(-1)

    like = dist.Normal(torch.zeros(2, 3), 2.0 * torch.ones(2, 3)).to_event(1)
    out = fuse(like, StudentT(3), num_samples=4000)
    assert out.mean.shape == (2, 3) and out.variance.mean() < 4.0  # the prior shrinks


def test_bad_priors_get_clear_errors():
    with pytest.raises(ValueError, match="scale"):
        GaussianPrior(2, scale=-1.0)
    with pytest.raises(ValueError, match="scale"):
        GoalPrior(torch.zeros(2), scale=0.0)
    like = dist.Normal(torch.zeros(1, 2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="event shape"):
        fuse(like, StandardNormal(3))

    class Broken(LatentPrior):
        def log_prob(self, z, eta=None):
            return torch.full(z.shape[:-1], float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        fuse(like, Broken(2))

    class WrongShape(LatentPrior):
        def log_prob(self, z, eta=None):
            return z.sum()

    with pytest.raises(ValueError, match="must return shape"):
        fuse(like, WrongShape(2))
    with pytest.raises(ValueError, match="unknown weight_prior"):
        make_weight_prior("cauchy-ish")


def test_gamma_kl_site_equals_analytic_kl():
    from pyro.infer import TraceMeanField_ELBO

    from bjepa.models import BJEPA

    torch.manual_seed(0)
    xc, xt = torch.randn(9, 5), torch.randn(9, 5)
    m = BJEPA(5, 2, gamma=0.3, beta=0.2)
    m0 = BJEPA(5, 2, gamma=0.0, beta=0.2)
    m0.load_state_dict(m.state_dict(), strict=False)
    import pyro

    pyro.set_rng_seed(1)
    with_kl = TraceMeanField_ELBO().loss(m.model, m.guide, xc, xt)
    pyro.set_rng_seed(1)
    without = TraceMeanField_ELBO().loss(m0.model, m0.guide, xc, xt)
    with torch.no_grad():
        like = m.predictive_dist(xc)
        kl = kl_divergence(like, m.struct_prior.distribution().expand(like.batch_shape)).sum()
    assert with_kl - without == pytest.approx(0.3 * float(kl), rel=1e-4, abs=1e-4)
