"""BJEPA: structural prior in the ELBO, weight posteriors, fusion at prediction, NUTS."""

import pyro
import pytest
import torch

from bjepa.data import noisy_tv
from bjepa.experiments.noisy_tv import probe
from bjepa.inference import fit, nuts_posterior, posterior_summary, svi_weight_posterior
from bjepa.models import BJEPA
from bjepa.priors import EnergyPrior, GoalPrior, LatentPrior


def _sites(fn, *args):
    tr = pyro.poutine.trace(fn).get_trace(*args)
    return {n for n, s in tr.nodes.items() if s["type"] == "sample" and n != "data"
            and not s["is_observed"] and not s["infer"].get("is_auxiliary")}


@pytest.mark.parametrize("weight_prior", [None, "normal", "laplace", "horseshoe"])
def test_guide_covers_every_model_latent(weight_prior):
    m = BJEPA(5, 2, weight_prior=weight_prior)
    xc, xt = torch.randn(6, 5), torch.randn(6, 5)
    guide_sites = _sites(m.guide, xc, xt)
    g = pyro.poutine.trace(m.guide).get_trace(xc, xt)
    model_sites = _sites(pyro.poutine.replay(m.model, trace=g), xc, xt)
    assert guide_sites == model_sites
    assert {"z_target", "z_struct"} <= model_sites
    assert len(model_sites) == 2 + (0 if weight_prior is None else 2)


@pytest.mark.parametrize("guide", ["normal", "lowrank", "mvn"])
def test_weight_posterior_trains_and_predicts(guide, small_split):
    tr, te = small_split
    m = BJEPA(20, 4, weight_prior="normal", weight_guide=guide)
    h = fit(m, tr.obs[:-1], tr.obs[1:], steps=150, batch_size=128, progress=False)
    assert h.loss[-1] < h.loss[0]
    d = m.predict(te.obs[:7], num_samples=20)
    assert d.batch_shape == (7,) and d.event_shape == (4,)
    assert torch.isfinite(d.mean).all() and (d.variance > 0).all()
    draws = m.weight_samples(30)
    assert set(draws) == set(m.weight_site_names)
    assert all(v.shape[0] == 30 and v.std(0).max() > 0 for v in draws.values())


def test_callable_weight_prior():
    """A callable prior becomes the weight sites' prior: the model's log-density of a weight
    draw is the Student-t log-density of it, and training runs."""
    m = BJEPA(5, 2, weight_prior=lambda name, p: torch.distributions.StudentT(4.0, 0.0, 1.0))
    xc, xt = torch.randn(6, 5), torch.randn(6, 5)
    g = pyro.poutine.trace(m.guide).get_trace(xc, xt)
    tr = pyro.poutine.trace(pyro.poutine.replay(m.model, trace=g)).get_trace(xc, xt)
    assert set(m.weight_site_names) <= set(tr.nodes)
    for name in m.weight_site_names:
        site = tr.nodes[name]
        w = site["value"]
        want = torch.distributions.StudentT(4.0, 0.0, 1.0).log_prob(w).sum()
        torch.testing.assert_close(site["fn"].log_prob(w), want)
        assert w.shape == site["fn"].event_shape  # one site per parameter tensor
    h = fit(m, torch.randn(40, 5), torch.randn(40, 5), steps=5, progress=False)
    assert all(torch.isfinite(torch.tensor(h.loss)))
    with pytest.raises(ValueError, match="shape"):
        BJEPA(5, 2, weight_prior=lambda name, p: torch.distributions.Normal(
            torch.zeros(7), 1.0))


def test_goal_prior_moves_prediction_by_the_precisions(small_split):
    tr, te = small_split
    m = BJEPA(20, 4)
    fit(m, tr.obs[:-1], tr.obs[1:], steps=100, progress=False)
    like = m.predict(te.obs[:10])
    goal = m.encode_target(te.obs[-1:])[0] + 3.0
    for s in (0.1, 1.0, 10.0):
        fused = m.predict(te.obs[:10], prior=GoalPrior(goal, s))
        w = like.variance / (like.variance + s**2)  # weight of the goal, per dimension
        expected = like.mean + w * (goal - like.mean)
        torch.testing.assert_close(fused.mean, expected, rtol=1e-4, atol=1e-4)
        assert (fused.variance < like.variance).all()


def test_custom_prior_end_to_end(small_split):
    """A "stay inside a box" energy prior written here, used in training and in fusion."""
    tr, te = small_split

    class BoxPrior(LatentPrior):
        def __init__(self, dim, half_width=2.0, sharpness=4.0):
            super().__init__(dim)
            self.half_width, self.sharpness = half_width, sharpness

        def log_prob(self, z, eta=None):
            excess = torch.relu(z.abs() - self.half_width)
            return -(self.sharpness * excess).pow(2).sum(-1)

    m = BJEPA(20, 4, prior=BoxPrior(4))
    h = fit(m, tr.obs[:-1], tr.obs[1:], steps=100, progress=False)
    assert all(torch.isfinite(torch.tensor(h.loss)))
    like = m.predict(te.obs[:20])
    # a box edge inside the predictive spread, so importance sampling has work to do
    box = BoxPrior(4, half_width=float(like.mean.abs().median()), sharpness=1.0)
    box.sharpness = float(3.0 / like.stddev.mean())  # walls about 1/3 predictive sd thick
    fused = m.predict(te.obs[:20], prior=box, fusion_samples=4000)
    outside = like.mean.abs() > box.half_width + like.stddev
    assert outside.any()
    excess = lambda d: torch.relu(d.mean.abs() - box.half_width)[outside].mean()  # noqa: E731
    assert excess(fused) < 0.7 * excess(like)  # pulled towards the box
    assert (fused.ess >= 1).all()


def test_bjepa_filters_noisy_tv_like_vjepa():
    tr, te = noisy_tv.make_split(sigma=6.0, seed=2, train_steps=1500, test_steps=600)
    m = BJEPA(20, 4)
    fit(m, tr.obs[:-1], tr.obs[1:], steps=600, lr=3e-3, progress=False)
    assert probe(m, tr, te)["signal_r2"] > 0.9


def test_energy_fusion_reports_ess():
    """The reported ESS is ``(Σ w)² / Σ w²`` of the importance weights ``w ∝ exp(−E(z))`` at
    the proposals; a flat energy gives every draw the same weight (ESS = draws)."""
    m = BJEPA(5, 2)
    energy = lambda z: z.pow(2).sum(-1)  # noqa: E731
    d = m.predict(torch.randn(3, 5), prior=EnergyPrior(2, energy), fusion_samples=500)
    assert d.ess.shape == (3,)
    z = d.enumerate_support()  # (3, 500, 2): each row's proposals
    w = torch.exp(-energy(z).double())
    torch.testing.assert_close(d.ess.double(), w.sum(-1).pow(2) / w.pow(2).sum(-1), rtol=1e-4,
                               atol=0)
    assert (d.ess < 500).all() and (d.ess > 1).all()
    flat = m.predict(torch.randn(3, 5), prior=EnergyPrior(2, lambda z: 0.0 * z.sum(-1)),
                     fusion_samples=500)
    torch.testing.assert_close(flat.ess, torch.full((3,), 500.0), rtol=1e-5, atol=0)


def _toy_regression(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    zc = torch.randn(n, 2, generator=g)
    A = torch.tensor([[0.9, -0.3], [0.2, 0.8]])
    return zc, zc @ A.T + 0.1 + 0.5 * torch.randn(n, 2, generator=g)


@pytest.mark.slow
def test_svi_weight_posterior_matches_nuts():
    zc, zt = _toy_regression()
    m = BJEPA(3, 2, weight_prior="normal", init="random")
    nuts, mcmc = nuts_posterior(m, z_context=zc, z_target=zt, num_samples=800,
                                warmup_steps=400)
    ref = posterior_summary(nuts)
    for guide, mean_tol, sd_tol in [("mvn", 0.25, 0.30), ("normal", 0.5, 0.5)]:
        est = posterior_summary(svi_weight_posterior(m, z_context=zc, z_target=zt,
                                                     guide=guide, steps=1200))
        for site in ref:
            dmean = ((est[site]["mean"] - ref[site]["mean"]).abs() / ref[site]["sd"]).max()
            dsd = (est[site]["sd"] / ref[site]["sd"] - 1).abs().max()
            assert dmean < mean_tol, (guide, site, float(dmean))
            assert dsd < sd_tol, (guide, site, float(dsd))


def test_only_models_without_a_weight_prior_may_be_compiled():
    assert BJEPA(5, 2).jit_safe
    assert not BJEPA(5, 2, weight_prior="normal").jit_safe  # autoguides train eagerly
