"""The state-space baselines: Kalman oracle, learned linear-Gaussian SSM and RSSM."""

import numpy as np
import pytest
import torch
from pyro import poutine

from bjepa.data import noisy_tv
from bjepa.experiments import baselines
from bjepa.inference import fit
from bjepa.inference.checkpoint import load_model, save_checkpoint
from bjepa.metrics import linear_probe_r2, r2_score
from bjepa.models.rssm import RSSM
from bjepa.models.state_space import (
    KalmanOracle,
    LinearGaussianSSM,
    frame_windows,
    kalman_filter,
    window_batch,
)


@pytest.fixture(scope="module")
def clean_split():
    return noisy_tv.make_split(sigma=0.0, seed=0, train_steps=1500, test_steps=600)


def signal_r2(model, train, test):
    return baselines.probe(model, train, test)["signal_r2"]


def test_frame_windows_cut_consecutive_frames():
    x = torch.arange(23.0).reshape(23, 1).expand(23, 2)
    w = frame_windows(x, 5, burn_in=3)
    assert w.shape == (4, 8, 2)
    assert w[1, :, 0].tolist() == list(range(5, 13))  # burn-in 5..7, scored 8..12
    assert frame_windows(x, 5).shape == (4, 5, 2)
    with pytest.raises(ValueError, match="window"):
        frame_windows(x, 30)
    with pytest.raises(ValueError, match="replicas=1"):
        frame_windows(x.expand(2, 23, 2), 5)
    assert window_batch(None, 5, 4) is None
    assert window_batch(12, 5, 4) == 3
    assert window_batch(1000, 5, 4) == 4


def test_kalman_filter_matches_a_scalar_closed_form():
    # z_{t+1} = z_t + w, x_t = z_t + v with Q = R = 1: steady-state gain (√5 − 1)/2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 1)).cumsum(0)
    one = np.eye(1)
    m = kalman_filter(x, one, one, one, one, np.zeros(1), 1e6 * one)
    k = (np.sqrt(5) - 1) / 2
    ref = np.empty(400)
    ref[0] = x[0, 0]  # a diffuse start takes the first observation
    for t in range(1, 400):
        ref[t] = ref[t - 1] + k * (x[t, 0] - ref[t - 1])
    np.testing.assert_allclose(m[50:, 0], ref[50:], atol=1e-6)


def test_oracle_recovers_the_signal_at_every_sigma():
    for sigma in (0.0, 8.0):
        train, test = noisy_tv.make_split(sigma, 1, train_steps=800, test_steps=400)
        oracle = KalmanOracle.from_split(train)
        direct = r2_score(test.signal[1:], oracle.predict_signal(test.obs)[:-1]).mean()
        assert direct > 0.99
        assert signal_r2(oracle, train, test) > 0.99


def test_lgssm_elbo_is_the_exact_log_likelihood(clean_split):
    train, _ = clean_split
    m = LinearGaussianSSM(20, 4, window=50).double()
    m.init_from_data(train.obs[:-1].double(), train.obs[1:].double())
    tr = poutine.trace(m.model).get_trace(train.obs[:-1].double())
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample"
            and not s["is_observed"]] == ["windows"]  # the plate only: states are marginalised
    # the same likelihood by the numpy Kalman filter's innovations
    seq = frame_windows(train.obs[:-1], 50)[0].double()
    F = m.transition_matrix.detach().double().T
    L = m.transition_scale_tril.detach().double()
    H = m.observation_matrix.detach().double().T
    R = torch.diag(m.observation_scale.detach().double() ** 2)
    P0 = m.init_scale_tril.detach().double()
    mean, P = m.init_loc.detach().double() @ F.T, F @ P0 @ P0.T @ F.T + L @ L.T
    ll = 0.0
    for t in range(50):
        S = H @ P @ H.T + R
        e = seq[t] - m.obs_loc.detach().double() - H @ mean
        ll += torch.distributions.MultivariateNormal(torch.zeros(20, dtype=torch.float64),
                                                     S).log_prob(e)
        K = P @ H.T @ torch.linalg.inv(S)
        mean, P = F @ (mean + K @ e), F @ (P - K @ H @ P) @ F.T + L @ L.T
    with torch.no_grad():
        one = m.hmm_dist(50).log_prob(seq[None] - m.obs_loc)
    assert float(one) == pytest.approx(float(ll), rel=1e-8)


@pytest.mark.slow
def test_lgssm_learns_from_a_random_start(clean_split):
    train, test = clean_split
    m = LinearGaussianSSM(20, 4, init="random")
    before = signal_r2(m, train, test)
    hist = fit(m, train.obs[:-1], train.obs[1:], steps=300, lr=2e-2, batch_size=500,
               progress=False, log_every=10)
    assert hist.loss[-1] < hist.loss[0] - 20  # nats per frame
    assert signal_r2(m, train, test) > 0.95
    assert signal_r2(m, train, test) >= before - 1e-3


def test_lgssm_checkpoint_round_trip(tmp_path, clean_split):
    train, test = clean_split
    m = LinearGaussianSSM(20, 3, window=25)
    m.init_from_data(train.obs[:-1], train.obs[1:])
    save_checkpoint(tmp_path / "m.pt", m)
    back = load_model(tmp_path / "m.pt")
    torch.testing.assert_close(back.encode(test.obs), m.encode(test.obs))


def test_rssm_guide_covers_every_latent_site():
    m = RSSM(6, 2, hidden_dim=8, window=5, burn_in=2)
    x = torch.randn(40, 6)
    guide = poutine.trace(m.guide).get_trace(x, None, batch_size=10)
    model = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x, None, batch_size=10)
    latent = {n for n, s in model.nodes.items() if s["type"] == "sample" and not s["is_observed"]
              and n != "windows"}
    guided = {n for n, s in guide.nodes.items() if s["type"] == "sample" and n != "windows"}
    assert latent == guided == {f"z_{t}" for t in range(5)}
    assert model.nodes["windows"]["value"].tolist() == guide.nodes["windows"]["value"].tolist()
    assert m.encode(x).shape == (40, 8 + 2)


def test_rssm_trains_every_network():
    m = RSSM(6, 2, hidden_dim=8, window=5, burn_in=2)
    x = torch.randn(40, 6)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    fit(m, x[:-1], x[1:], steps=3, lr=1e-2, progress=False)
    changed = {k for k, v in m.named_parameters() if not torch.equal(v, before[k])}
    assert changed == set(before)


@pytest.mark.slow
def test_rssm_learns_the_clean_signal(clean_split):
    train, test = clean_split
    m = RSSM(20, 4)
    fit(m, train.obs[:-1], train.obs[1:], steps=600, lr=3e-3, progress=False)
    assert signal_r2(m, train, test) > 0.9


def test_quick_run_writes_a_run_folder(tmp_path):
    from bjepa.runs import RunFolder

    cfg = baselines.BaselinesConfig.quick(models=["kalman", "lgssm"], steps=10,
                                          train_steps=600, test_steps=300)
    with RunFolder(tmp_path / "run") as folder:
        rows = baselines.run(cfg, folder)
    assert {(r["model"], r["sigma"]) for r in rows} == {(m, s) for m in ("kalman", "lgssm")
                                                         for s in (0.0, 8.0)}
    for name in ("config.json", "results.csv", "results.json", "summary.json",
                 "r2_vs_sigma.png", "checkpoints/lgssm-sigma0-seed0.pt"):
        assert (tmp_path / "run" / name).exists(), name
    kalman = [r for r in rows if r["model"] == "kalman"]
    assert all(r["signal_r2"] > 0.99 and r["direct_r2"] > 0.99 for r in kalman)


def test_config_refuses_unknown_models():
    with pytest.raises(ValueError, match="model"):
        baselines.BaselinesConfig(models=["kalmann"]).validate()
    with pytest.raises(ValueError, match="train="):
        baselines.build_baseline("kalman", 20)


def test_linear_probe_of_oracle_equals_direct_prediction_up_to_the_probe():
    train, test = noisy_tv.make_split(4.0, 2, train_steps=600, test_steps=300)
    oracle = KalmanOracle.from_split(train)
    z = oracle.encode(test.obs)
    assert z.shape == (300, 8)
    direct = float(r2_score(test.signal[1:], z[:-1, :4]).mean())
    probed = linear_probe_r2(oracle.encode(train.obs)[:-1], train.signal[1:], z[:-1],
                             test.signal[1:])
    assert probed == pytest.approx(direct, abs=0.01)
