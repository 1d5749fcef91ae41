"""The Noisy TV generator, the probe metric, and the headline behaviour."""

import numpy as np
import pytest
import torch

from bjepa.data import noisy_tv
from bjepa.experiments.noisy_tv import probe
from bjepa.inference import fit
from bjepa.metrics import linear_probe_r2
from bjepa.models import VAE, VJEPA
from bjepa.models.base import canonical_directions


def test_split_shapes_and_standardisation():
    tr, te = noisy_tv.make_split(sigma=8.0, seed=0)
    assert tr.obs.shape == (6000, 20) and te.obs.shape == (2000, 20)
    assert tr.signal.shape == (6000, 4) and tr.distractor.shape == (6000, 4)
    assert tr.obs.dtype == torch.float32
    torch.testing.assert_close(tr.obs.mean(0), torch.zeros(20), atol=1e-4, rtol=0)
    torch.testing.assert_close(tr.obs.std(0), torch.ones(20), atol=1e-3, rtol=0)
    assert not torch.allclose(te.obs[:100], tr.obs[:100])  # separate trajectories


def test_system_matches_spec():
    tr, _ = noisy_tv.make_split(sigma=2.0, seed=1)
    p = tr.params
    np.testing.assert_allclose(p.A @ p.A.T, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(p.C, axis=0), 1.0)
    np.testing.assert_allclose(np.linalg.norm(p.D, axis=0), 1.0)
    s = tr.signal.double().numpy()
    resid = s[1:] - s[:-1] @ p.A.T
    assert resid.std() == pytest.approx(0.1, rel=0.05)
    d = tr.distractor.double().numpy() / p.sigma
    resid_d = d[1:] - 0.9 * d[:-1]
    assert resid_d.std() == pytest.approx(0.3, rel=0.05)
    raw = tr.obs.double().numpy() * tr.std.numpy() + tr.mean.numpy()
    eps = raw - s @ p.C.T - p.sigma * d @ p.D.T
    assert eps.std() == pytest.approx(0.01, rel=0.1)


def test_same_seed_same_data():
    a, _ = noisy_tv.make_split(sigma=1.0, seed=5, train_steps=100, test_steps=50)
    b, _ = noisy_tv.make_split(sigma=1.0, seed=5, train_steps=100, test_steps=50)
    torch.testing.assert_close(a.obs, b.obs, rtol=0, atol=0)


def test_probe_r2_known_values():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 3, generator=g)
    y = z @ torch.tensor([[1.0], [2.0], [-1.0]]) + 0.5
    assert linear_probe_r2(z[:400], y[:400], z[400:], y[400:]) == pytest.approx(1.0, abs=1e-8)
    noise = torch.randn(500, 1, generator=g)
    assert linear_probe_r2(z[:400], noise[:400], z[400:], noise[400:]) < 0.05
    const = torch.ones(500, 1)
    assert np.isnan(linear_probe_r2(z[:400], const[:400], z[400:], const[400:]))


def test_canonical_directions_recover_shared_subspace():
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(2000, 2, generator=g)
    a = torch.cat([shared, torch.randn(2000, 3, generator=g)], 1) @ torch.randn(5, 5,
                                                                              generator=g)
    b = torch.cat([shared, torch.randn(2000, 3, generator=g)], 1)
    W, rho = canonical_directions(a, b, 2)
    assert rho.min() > 0.99
    za = a @ W.T
    assert linear_probe_r2(za, shared, za, shared) > 0.99


def test_vjepa_beats_vae_on_small_noisy_tv():
    tr, te = noisy_tv.make_split(sigma=6.0, seed=2, train_steps=1500, test_steps=600)
    scores = {}
    for cls in (VJEPA, VAE):
        torch.manual_seed(0)
        m = cls(20, 4)
        fit(m, tr.obs[:-1], tr.obs[1:], steps=600, lr=3e-3, progress=False)
        scores[cls.__name__] = probe(m, tr, te)
    assert scores["VJEPA"]["signal_r2"] > 0.9
    assert scores["VJEPA"]["signal_r2"] > scores["VAE"]["signal_r2"] + 0.2
    assert scores["VJEPA"]["noise_r2"] < scores["VAE"]["noise_r2"]
