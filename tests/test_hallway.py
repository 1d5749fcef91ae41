"""The forking hallway and the mixture-density head (docs/method.md#multimodal-hallway).

Closed-form checks of the MDN head (normalised weights, log-density against a hand-written
mixture, the VJEPA ELBO identity with an MDN predictor), the data's ground truth, the
experiment's claims on a small configuration, and the CLI's run folder.
"""

import functools
import json
import math

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import Normal, kl_divergence

from bjepa.cli import main
from bjepa.data import hallway as hw
from bjepa.experiments import hallway as exp
from bjepa.models import VJEPA
from bjepa.models.heads import HEADS, make_head, register_head
from bjepa.models.mixture import DEFAULT_COMPONENTS, MixtureDensityHead, register_mdn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread is faster and immune to oversubscribed CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hand_mixture_log_prob(head: MixtureDensityHead, z: torch.Tensor, x: torch.Tensor):
    """log Σ_k π_k Π_d N(x_d; m_kd, s_kd²), written out with logsumexp."""
    log_w, loc, scale = head.mixture_params(z)
    comp = Normal(loc, scale).log_prob(x.unsqueeze(-2)).sum(-1)
    return torch.logsumexp(log_w + comp, dim=-1)


# -- the head -------------------------------------------------------------------------------
@pytest.mark.parametrize("net", ["linear", "mlp"])
def test_mdn_shapes_weights_and_log_prob(net):
    torch.manual_seed(0)
    head = MixtureDensityHead(3, 2, net=net, n_components=4)
    z, x = torch.randn(7, 3), torch.randn(7, 2)
    pred = head(z)
    assert pred.batch_shape == (7,) and pred.event_shape == (2,)
    assert pred.sample((5,)).shape == (5, 7, 2)
    log_w, loc, scale = head.mixture_params(z)
    assert log_w.shape == (7, 4) and loc.shape == scale.shape == (7, 4, 2)
    torch.testing.assert_close(log_w.exp().sum(-1), torch.ones(7))
    torch.testing.assert_close(pred.log_prob(x), hand_mixture_log_prob(head, z, x))
    torch.testing.assert_close(pred.mean, (log_w.exp().unsqueeze(-1) * loc).sum(-2))


def test_mdn_is_numerically_robust_at_extremes():
    head = MixtureDensityHead(2, 2, net="linear", n_components=3, min_scale=1e-3)
    with torch.no_grad():
        head.net.weight.zero_()
        head.net.bias[:3] = torch.tensor([1e4, -1e4, 0.0])  # extreme logits
        head.net.bias[3:9] = 0.0
        head.net.bias[9:] = -1e4  # scales at the floor
    z = torch.zeros(4, 2, requires_grad=True)
    log_w, _, scale = head.mixture_params(z)
    assert torch.isfinite(log_w).all()
    torch.testing.assert_close(log_w.exp().sum(-1), torch.ones(4))
    torch.testing.assert_close(scale, torch.full_like(scale, 1e-3))
    lp = head(z).log_prob(torch.full((4, 2), 0.5))
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_mdn_registration_and_argument_checks():
    assert "mdn" in HEADS
    assert make_head("mdn", 2, 2).n_components == DEFAULT_COMPONENTS
    assert register_mdn(3) == "mdn3" == register_mdn(3)  # idempotent
    assert make_head("mdn3", 2, 2, net="mlp", hidden_dim=8).n_components == 3
    register_head("mdn-test", functools.partial(MixtureDensityHead, n_components=2))
    assert VJEPA(4, 2, head="mdn-test").predictor.n_components == 2
    with pytest.raises(ValueError, match="already registered"):
        register_mdn(2, name="diag")
    with pytest.raises(ValueError, match="already registered"):
        register_mdn(4, name="mdn3")
    with pytest.raises(ValueError, match="n_components"):
        MixtureDensityHead(2, 2, n_components=0)
    with pytest.raises(ValueError, match="min_scale"):
        MixtureDensityHead(2, 2, min_scale=0.0)


@pytest.mark.parametrize("encoder", ["linear", "mlp"])
def test_vjepa_mdn_elbo_equals_mixture_nll_plus_beta_kl(encoder):
    torch.manual_seed(0)
    m = VJEPA(6, 3, encoder=encoder, head="mdn", beta=0.37)
    xc, xt = torch.randn(11, 6), torch.randn(11, 6)
    guide_tr = pyro.poutine.trace(m.guide).get_trace(xc, xt)
    z_t = guide_tr.nodes["z_target"]["value"]
    loss = TraceMeanField_ELBO().differentiable_loss(
        pyro.poutine.replay(m.model, trace=guide_tr), pyro.poutine.replay(m.guide, guide_tr),
        xc, xt)
    nll = -hand_mixture_log_prob(m.predictor, m.context_encoder(xc), z_t).sum()
    kl = kl_divergence(m.target_dist(xt).base_dist, Normal(0.0, 1.0)).sum()
    torch.testing.assert_close(loss, nll + 0.37 * kl, rtol=1e-5, atol=1e-5)
    pred = m.predict(xc)
    assert type(pred).__name__ == "MixtureSameFamily" and pred.batch_shape == (11,)


def test_vjepa_with_mdn_head_survives_a_checkpoint(tmp_path):
    from bjepa.inference.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    m = VJEPA(6, 2, encoder="mlp", head="mdn")
    save_checkpoint(tmp_path / "m.pt", m)
    back = load_model(tmp_path / "m.pt")
    x, z = torch.randn(9, 6), torch.randn(9, 2)
    assert back.predictor.n_components == DEFAULT_COMPONENTS
    torch.testing.assert_close(back.predict(x).log_prob(z), m.predict(x).log_prob(z))


# -- the data -------------------------------------------------------------------------------
def test_hallway_data_ground_truth():
    train, test = hw.make_split(3, train_episodes=150, test_episodes=40)
    again, _ = hw.make_split(3, train_episodes=150, test_episodes=40)
    torch.testing.assert_close(train.context, again.context)
    assert not torch.equal(train.context[:100], hw.simulate(150, seed=4).context[:100])
    torch.testing.assert_close(train.embedding, test.embedding)  # one hallway, two samples
    assert train.context.shape[1] == 8 and train.context_pos.shape[1] == 2
    g = train.geometry
    for pos in [train.context_pos, train.target_pos]:
        assert g.in_corridor(pos).all()
    # the turn is a fair coin, fixed per episode
    per_episode = torch.zeros(150, dtype=torch.long)
    per_episode[train.episode] = train.branch
    assert set(per_episode.tolist()) == {-1, 1}
    assert abs(float((per_episode == 1).float().mean()) - 0.5) < 0.15
    # past the fork the target lies on the branch its label names
    fork = train.fork_mask()
    assert 30 < int(fork.sum()) < len(train) // 4
    expected = torch.where(train.branch[fork] == 1, hw.REGION_LEFT, hw.REGION_RIGHT)
    assert torch.equal(g.region(train.target_pos[fork]), expected)
    # ... and the average of the two futures is in the wall: the Gaussian head's trap
    assert g.region(train.target_pos[fork].mean(0, keepdim=True)).item() == hw.REGION_WALL
    # observations are the embedded positions plus small noise
    resid = train.context - train.context_pos @ train.embedding.T
    assert 0.01 < float(resid.std()) < 0.03


def test_hallway_data_validation():
    with pytest.raises(ValueError, match="obs_dim"):
        hw.simulate(2, obs_dim=1)
    with pytest.raises(ValueError, match="speed"):
        hw.simulate(2, speed=0.0)
    with pytest.raises(ValueError, match="seed"):
        hw.simulate(2, seed=-1)
    with pytest.raises(ValueError, match="branch_angle"):
        hw.HallwayGeometry(branch_angle=95.0)
    with pytest.raises(ValueError, match="embedding"):
        hw.simulate(2, obs_dim=4, embedding=torch.zeros(3, 2).numpy())


# -- the experiment's claims ----------------------------------------------------------------
SMALL = dict(seeds=[0], steps=400, train_episodes=80, test_episodes=60, n_samples=100,
             n_rollouts=10, n_rollout_starts=10, progress=False)


@pytest.fixture(scope="module")
def trained():
    pyro.clear_param_store()
    cfg = exp.HallwayConfig(**SMALL).validate()
    train, test = hw.make_split(0, train_episodes=cfg.train_episodes,
                                test_episodes=cfg.test_episodes)
    return {head: exp.run_one(head, 0, cfg, train, test)[0] for head in ["diag", "mdn"]}


def test_gaussian_head_predicts_the_wall(trained):
    gauss, mdn = trained["diag"], trained["mdn"]
    assert gauss["mean_in_wall"] > 0.6  # its mean falls between the branches
    assert gauss["both_modes"] == 0.0
    assert gauss["sample_in_corridor_fork"] < 0.75  # much of its mass is in the wall
    assert mdn["nll_fork"] < gauss["nll_fork"] - 0.5  # and its NLL at the fork is worse
    assert mdn["nll_all"] < gauss["nll_all"]


def test_mdn_recovers_both_modes(trained):
    mdn = trained["mdn"]
    assert mdn["mass_left"] >= 0.35 and mdn["mass_right"] >= 0.35
    assert mdn["mode_coverage"] > 0.9  # component means on both branches
    assert mdn["both_modes"] > 0.4
    assert mdn["sample_in_corridor_fork"] > 0.95
    assert min(mdn["sample_left"], mdn["sample_right"]) > 0.3


def test_sampled_rollouts_stay_in_the_corridor(trained):
    gauss, mdn = trained["diag"], trained["mdn"]
    assert mdn["rollout_in_corridor"] > 0.95
    assert mdn["rollout_in_corridor"] > gauss["rollout_in_corridor"]
    assert min(mdn["rollout_left"], mdn["rollout_right"]) > 0.2  # both futures are visited
    assert mdn["probe_r2"] > 0.99 and gauss["probe_r2"] > 0.99


def test_position_probe_inverts_and_rejects_collapse():
    probe = exp.PositionProbe(torch.tensor([[2.0, 0.5], [0.0, 1.0]]), torch.tensor([1.0, -1.0]))
    p = torch.randn(5, 2)
    torch.testing.assert_close(probe.to_position(probe.to_latent(p)), p)
    assert math.isclose(probe.log_abs_det, math.log(2.0), rel_tol=1e-6)

    class Collapsed:
        def encode_target(self, x):
            return torch.zeros(x.shape[0], 2)

    pairs = hw.simulate(5, seed=0)
    with pytest.raises(FloatingPointError, match="collapsed"):
        exp.fit_position_probe(Collapsed(), pairs)


def test_config_validation():
    with pytest.raises(ValueError, match="latent_dim"):
        exp.HallwayConfig(latent_dim=3).validate()
    with pytest.raises(ValueError, match="unknown head"):
        exp.HallwayConfig(heads=["gmm"]).validate()
    with pytest.raises(ValueError, match="mode_mass"):
        exp.HallwayConfig(mode_mass=1.5).validate()


# -- the command line -----------------------------------------------------------------------
def test_hallway_cli_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["hallway", "--quick", "--seeds", "0-1", "--steps", "20", "--components", "3",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    from bjepa.cli.hallway import FILES

    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 * 2
    assert set(exp.METRICS) | {"head", "seed", "train_seconds"} <= set(rows[0])
    assert json.loads((out / "config.json").read_text())["n_components"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert [s["head"] for s in summary] == ["diag", "mdn"] and summary[0]["n"] == 2
    assert "nll_fork" in capsys.readouterr().out
    # a second run into the same folder is refused, bad values are named
    assert main(["hallway", "--quick", "--steps", "2", "--out", str(out)]) == 2
    assert main(["hallway", "--heads", "gmm", "--out", str(tmp_path / "x")]) == 2
    assert "unknown head" in capsys.readouterr().err
