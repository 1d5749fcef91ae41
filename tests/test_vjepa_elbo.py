"""Analytic checks: the Pyro ELBO equals the VJEPA loss NLL + β·KL."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import Normal, kl_divergence

from bjepa.models import VJEPA


def hand_loss(m: VJEPA, xc, xt, z_t):
    pred = m.predictive_dist(xc)
    q = m.target_dist(xt)
    nll = -pred.log_prob(z_t).sum()
    kl = kl_divergence(q.base_dist, Normal(0.0, 1.0)).sum()
    return nll, kl


@pytest.mark.parametrize("head", ["diag", "full"])
@pytest.mark.parametrize("encoder", ["linear", "mlp"])
def test_meanfield_elbo_equals_nll_plus_beta_kl(head, encoder):
    torch.manual_seed(0)
    m = VJEPA(6, 3, encoder=encoder, head=head, beta=0.37)
    xc, xt = torch.randn(11, 6), torch.randn(11, 6)
    guide_tr = pyro.poutine.trace(m.guide).get_trace(xc, xt)
    z_t = guide_tr.nodes["z_target"]["value"]
    loss = TraceMeanField_ELBO().differentiable_loss(
        pyro.poutine.replay(m.model, trace=guide_tr), pyro.poutine.replay(m.guide, guide_tr),
        xc, xt)
    nll, kl = hand_loss(m, xc, xt, z_t)
    torch.testing.assert_close(loss, nll + 0.37 * kl, rtol=1e-5, atol=1e-5)


def test_trace_elbo_matches_in_expectation():
    torch.manual_seed(1)
    m = VJEPA(5, 2, beta=0.5)
    with torch.no_grad():
        m.target_scale_net.bias.fill_(0.5)  # a wide q so the estimator has real variance
    xc, xt = torch.randn(8, 5), torch.randn(8, 5)
    elbo = Trace_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    est = elbo.loss(m.model, m.guide, xc, xt)
    # exact expectation: E_q[-log p] (Gaussian cross-entropy) + beta * KL
    with torch.no_grad():
        pred, q = m.predictive_dist(xc).base_dist, m.target_dist(xt).base_dist
        ce = (0.5 * torch.log(2 * torch.pi * pred.scale**2)
              + ((q.loc - pred.loc) ** 2 + q.scale**2) / (2 * pred.scale**2)).sum()
        exact = ce + 0.5 * kl_divergence(q, Normal(0.0, 1.0)).sum()
    assert abs(est - float(exact)) < 0.01 * abs(float(exact)) + 0.05


def test_subsample_scales_to_full_data():
    """A mini-batch of B of N rows is the sum of its rows' NLL + β·KL, scaled by N / B
    (exactly, for the rows and draws the batch used); its mean over batches is the full-data
    loss to within 4 standard errors."""
    torch.manual_seed(2)
    m = VJEPA(4, 2, beta=0.1).double()
    xc, xt = torch.randn(40, 4, dtype=torch.float64), torch.randn(40, 4, dtype=torch.float64)
    pyro.set_rng_seed(0)
    for _ in range(3):
        guide_tr = pyro.poutine.trace(m.guide).get_trace(xc, xt, batch_size=10)
        idx = guide_tr.nodes["data"]["value"]
        assert idx.shape == (10,) and len(set(idx.tolist())) == 10
        loss = TraceMeanField_ELBO().differentiable_loss(
            pyro.poutine.replay(m.model, trace=guide_tr), pyro.poutine.replay(m.guide, guide_tr),
            xc, xt, batch_size=10)
        nll, kl = hand_loss(m, xc[idx], xt[idx], guide_tr.nodes["z_target"]["value"])
        torch.testing.assert_close(loss, 4.0 * (nll + 0.1 * kl), rtol=1e-10, atol=1e-10)
    # unbiased: the mean over many batches (rows and draws) is the full-data loss
    pyro.set_rng_seed(1)
    full = torch.tensor([TraceMeanField_ELBO().loss(m.model, m.guide, xc, xt)
                         for _ in range(200)])
    sub = torch.tensor([TraceMeanField_ELBO().loss(m.model, m.guide, xc, xt, batch_size=10)
                        for _ in range(800)])
    se = math.sqrt(sub.var() / len(sub) + full.var() / len(full))
    assert abs(sub.mean() - full.mean()) < 4 * se


def test_guide_sites_match_model_latents():
    m = VJEPA(4, 2)
    xc, xt = torch.randn(5, 4), torch.randn(5, 4)
    g = pyro.poutine.trace(m.guide).get_trace(xc, xt)
    mt = pyro.poutine.trace(pyro.poutine.replay(m.model, trace=g)).get_trace(xc, xt)
    latent = {n for n, s in mt.nodes.items() if s["type"] == "sample" and not s["is_observed"]
              and not n.startswith("data")}
    guided = {n for n, s in g.nodes.items() if s["type"] == "sample"
              and not n.startswith("data")}
    assert latent == guided == {"z_target"}


@pytest.mark.parametrize("encoder", ["linear", "mlp"])
@pytest.mark.parametrize("s0", [1e-3, 0.1, 0.3, 2.0, 50.0])
def test_target_scale_starts_at_target_scale_init(s0, encoder):
    """The variance head starts homoscedastic at σ_θ' = target_scale_init (the softplus
    inverse of its last bias, plus the heads' small floor)."""
    from bjepa.models.heads import MIN_SCALE

    m = VJEPA(5, 2, target_scale_init=s0, encoder=encoder, hidden_dim=8)
    sd = m.target_dist(torch.randn(9, 5)).stddev
    torch.testing.assert_close(sd, torch.full_like(sd, s0 + MIN_SCALE), rtol=1e-5, atol=1e-7)


def test_target_scale_init_bounds():
    VJEPA(4, 2, target_scale_init=1e6)  # the largest accepted
    for bad in (0.0, -1.0, 1.0000001e6):
        with pytest.raises(ValueError, match="target_scale_init"):
            VJEPA(4, 2, target_scale_init=bad)
