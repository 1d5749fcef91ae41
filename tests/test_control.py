"""DeepMind Control environments, the control world models, the reward planner and
`bjepa control` (docs/control.md)."""

import json

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

pytest.importorskip("dm_control")

from bjepa.cli import main  # noqa: E402
from bjepa.data.dmc import DMCEnv, Episode, ReplayBuffer  # noqa: E402
from bjepa.experiments.control import (  # noqa: E402
    ControlConfig,
    collect,
    play,
    run_seed,
    summarise,
)
from bjepa.models.control import ControlRecon, ControlVJEPA  # noqa: E402
from bjepa.planning.reward import RewardCEM  # noqa: E402


# -- environments --------------------------------------------------------------------------
def test_action_repeat_sums_the_rewards_of_the_control_steps():
    env = DMCEnv("cartpole-swingup", action_repeat=4, seed=3)
    raw = DMCEnv("cartpole-swingup", action_repeat=1, seed=3)
    assert env.episode_steps == 250 and raw.episode_steps == 1000
    np.testing.assert_array_equal(env.reset(), raw.reset())
    a = np.array([0.7])
    obs, r, done = env.step(a)
    total = 0.0
    for _ in range(4):
        o, ri, _ = raw.step(a)
        total += ri
    np.testing.assert_array_equal(obs, o)
    assert r == pytest.approx(total, abs=1e-12) and not done


def test_distractor_dimensions_have_the_stated_statistics():
    for kind, rho in (("tv", 0.0), ("ar1", 0.9)):
        env = DMCEnv("cartpole-swingup", distractor_dims=30, distractor=kind, sigma=2.0, seed=0)
        assert env.obs_dim == env.state_dim + 30 == 35
        d = [env.reset()[5:]]
        for _ in range(120):
            d.append(env.step(np.zeros(1))[0][5:])
        d = np.stack(d)
        assert d.std() == pytest.approx(2.0, rel=0.08)
        lag1 = np.mean([np.corrcoef(d[:-1, j], d[1:, j])[0, 1] for j in range(30)])
        assert lag1 == pytest.approx(rho, abs=0.06)


def test_environment_errors_name_the_argument():
    with pytest.raises(ValueError, match="task 'cartpole-nope'.*tasks of 'cartpole'"):
        DMCEnv("cartpole-nope")
    with pytest.raises(ValueError, match="domain-task"):
        DMCEnv("cartpole")
    with pytest.raises(ValueError, match="distractor"):
        DMCEnv(distractor="loud")
    with pytest.raises(ValueError, match="action_repeat"):
        DMCEnv(action_repeat=0)
    env = DMCEnv()
    env.reset()
    with pytest.raises(ValueError, match="action must be 1 finite values"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="action must be"):
        env.step(np.array([np.nan]))


def test_replay_windows_stay_inside_episodes_and_round_trip_without_pickle(tmp_path):
    eps = [Episode(np.arange(2 * (t + 1), dtype=np.float32).reshape(t + 1, 2) + 100 * i,
                   np.arange(t, dtype=np.float32).reshape(t, 1) + 100 * i,
                   np.arange(t, dtype=np.float32) + 100 * i) for i, t in enumerate((5, 2, 4))]
    buf = ReplayBuffer(eps)
    obs, act, rew = buf.sequences(3)
    assert obs.shape == (3 + 0 + 2, 4, 2) and act.shape == (5, 3, 1) and rew.shape == (5, 3)
    # windows never cross an episode: every window's values come from one episode
    assert all(len(set((o // 100).ravel().tolist())) == 1 for o in obs)
    np.testing.assert_array_equal(act[:, :, 0], rew)
    np.testing.assert_array_equal(obs[1, :, 0], [2, 4, 6, 8])
    folder = buf.save(tmp_path / "replay")
    back = ReplayBuffer.load(folder)
    for a, b in zip(buf.episodes, back.episodes, strict=True):
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.rewards, b.rewards)
    # saving again writes only the episodes added since
    first = (folder / "episode-00000.npz").stat().st_mtime_ns
    back.add(eps[0])
    back.save(folder)
    assert (folder / "episode-00000.npz").stat().st_mtime_ns == first
    assert len(ReplayBuffer.load(folder).episodes) == 4
    assert len(ReplayBuffer.load(folder, 2).episodes) == 2
    with pytest.raises(FileNotFoundError, match="fewer than 5 episodes"):
        ReplayBuffer.load(folder, 5)
    with pytest.raises(ValueError, match="no episode has 9 transitions"):
        buf.sequences(9)
    with pytest.raises(ValueError, match="T \\+ 1 observations"):
        Episode(np.zeros((3, 2)), np.zeros((3, 1)), np.zeros(3))


# -- models ---------------------------------------------------------------------------------
def _batch(n=6, h=3, d=4, a=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, h + 1, d, generator=g), torch.rand(n, h, a, generator=g) * 2 - 1,
            torch.rand(n, h, generator=g))


def test_pack_and_unpack_invert_each_other_and_check_shapes():
    m = ControlVJEPA(4, 2, 3, horizon=3, hidden_dim=8)
    obs, act, rew = _batch()
    ctx, tgt = m.pack(obs, act, rew)
    assert ctx.shape == (6, 4 + 3 * 2) and tgt.shape == (6, 3 * 4 + 3)
    o0, a, nxt, r = m.unpack(ctx, tgt)  # standardiser is the identity at construction
    torch.testing.assert_close(o0, obs[:, 0])
    torch.testing.assert_close(nxt, obs[:, 1:])
    torch.testing.assert_close(a, act)
    torch.testing.assert_close(r, rew)
    with pytest.raises(ValueError, match="horizon 3 need obs"):
        m.pack(obs[:, :3], act, rew)
    with pytest.raises(ValueError, match="context"):
        m.check_inputs(ctx[:, :-1], tgt)


def test_vjepa_elbo_is_dynamics_nll_plus_beta_kl_minus_reward_loglik():
    """One-particle Trace_ELBO with the guide's draw replayed equals the formula by hand."""
    torch.manual_seed(0)
    m = ControlVJEPA(4, 2, 3, horizon=3, hidden_dim=8, beta=0.3)
    obs, act, rew = _batch()
    ctx, tgt = m.pack(obs, act, rew)
    pyro.set_rng_seed(5)
    loss = Trace_ELBO().loss(m.model, m.guide, ctx, tgt)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        o0, a, nxt, r = m.unpack(ctx, tgt)
        q = torch.distributions.Normal(m._ema(nxt), torch.nn.functional.softplus(
            m.target_scale_net(nxt)) + 1e-4)
        z = q.sample()
        loc, scale, r_hat = m._rollout(o0, a)
        nll = -torch.distributions.Normal(loc, scale).log_prob(z).sum()
        log_ratio = (torch.distributions.Normal(0.0, 1.0).log_prob(z) - q.log_prob(z)).sum()
        rew_ll = torch.distributions.Normal(r_hat, m.reward_scale).log_prob(r).sum()
    assert loss == pytest.approx(float(nll - 0.3 * log_ratio - rew_ll), rel=1e-5)


def test_imagine_follows_the_mean_or_samples_around_it():
    torch.manual_seed(0)
    m = ControlVJEPA(4, 2, 3, horizon=2, hidden_dim=8).eval()
    z0 = torch.randn(3)
    acts = torch.rand(5, 4, 2)
    mean = m.imagine(z0, acts, sample=False)
    z, by_hand = z0.expand(5, 3), []
    for k in range(4):
        by_hand.append(m.reward(z, acts[:, k]))
        z = m.transition(z, acts[:, k]).loc
    torch.testing.assert_close(mean, torch.stack(by_hand, -1))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([m.imagine(z0, acts, sample=True, generator=g) for _ in range(3)])
    torch.testing.assert_close(draws[:, :, 0], mean[:, 0].expand(3, 5))  # first reward: z0
    assert (draws[:, :, 1:].std(0) > 0).all()


class _Quadratic(torch.nn.Module):
    """A world model whose return is known: r = −Σ (a − target)², latent ignored."""

    def __init__(self, target):
        super().__init__()
        self.target = torch.nn.Parameter(torch.as_tensor(target), requires_grad=False)

    def start_latent(self, obs):
        return obs

    def imagine(self, z0, actions, *, sample=True, generator=None):
        return -((actions - self.target) ** 2).sum(-1)


def test_reward_cem_finds_the_best_action_sequence_and_validates():
    planner = RewardCEM(_Quadratic([0.3, -0.6]), 2, horizon=4, population=200, elites=20,
                        iterations=8, sample=False)
    plan = planner.plan(np.zeros(2))
    torch.testing.assert_close(plan, torch.tensor([[0.3, -0.6]] * 4), atol=0.05, rtol=0)
    assert planner.act(np.zeros(2)) == pytest.approx([0.3, -0.6], abs=0.05)
    with pytest.raises(ValueError, match="elites"):
        RewardCEM(_Quadratic([0.0]), 1, population=4, elites=5)
    with pytest.raises(TypeError, match="start_latent"):
        RewardCEM(torch.nn.Linear(1, 1), 1)


@pytest.mark.parametrize("cls", [ControlVJEPA, ControlRecon])
def test_world_models_learn_the_cartpole_reward_from_random_play(cls):
    """Trained on random episodes, the predicted rewards of held-out sequences explain most of
    their variance (a model that ignored the latent would score about 0)."""
    from bjepa.inference import fit

    env = DMCEnv("cartpole-swingup", action_repeat=8, seed=0)
    rng = np.random.default_rng(0)
    buf = ReplayBuffer([play(env, None, rng=rng, max_steps=60) for _ in range(8)])
    test = ReplayBuffer([play(env, None, rng=rng, max_steps=60) for _ in range(2)])
    m = cls(env.obs_dim, 1, 8, horizon=3, hidden_dim=32)
    m.set_obs_stats(torch.as_tensor(np.concatenate([e.obs for e in buf.episodes])))
    ctx, tgt = m.pack(*(torch.as_tensor(x) for x in buf.sequences(3)))
    fit(m, ctx, tgt, steps=200, lr=3e-3, batch_size=64, progress=False, elbo="meanfield")
    obs, act, rew = (torch.as_tensor(x) for x in test.sequences(3))
    pred = m.imagine(m.encode(obs[:, 0]), act, sample=False)
    r2 = 1 - ((pred - rew) ** 2).sum() / ((rew - rew.mean()) ** 2).sum()
    assert r2 > 0.6


# -- the online loop and the command ----------------------------------------------------------
def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfg = ControlConfig.quick(episodes=2, eval_every=1, max_episode_steps=12, train_steps=5)
    straight = run_seed(cfg, "vjepa", 2, 0)
    run_seed(ControlConfig.quick(episodes=1, eval_every=1, max_episode_steps=12, train_steps=5),
             "vjepa", 2, 0, checkpoint_dir=tmp_path / "checkpoints" / "one")
    # an unfinished run folder is reported from its checkpoints
    (tmp_path / "config.json").write_text(json.dumps({"task": "cartpole-swingup"}))  # defaults
    partial = collect([tmp_path])
    assert [r["episode"] for r in partial] == [0, 1] and summarise(partial)[0]["env_steps"] == 192
    resumed = run_seed(cfg, "vjepa", 2, 0, checkpoint_dir=tmp_path / "checkpoints" / "one")
    assert straight[-1]["final_episodes"] == 1 and "final_return" not in straight[-2]
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in straight]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in resumed]


def test_default_planner_looks_20_steps_ahead_along_the_predictive_mean():
    """The defaults measured in docs/control.md reach the planner, and the config's planning
    settings are the planner's."""
    from bjepa.experiments.control import _planner, build_model, make_env

    cfg = ControlConfig()
    assert (cfg.plan_horizon, cfg.sample, cfg.population, cfg.iterations) == (20, False, 300, 5)
    env = make_env(cfg, 0, 0)
    model = build_model("vjepa", env, ControlConfig.quick())
    planner = _planner(model, env, cfg, explore=0.3, seed=1)
    assert (planner.horizon, planner.sample, planner.population, planner.elites,
            planner.iterations, planner.explore) == (20, False, 300, 30, 5, 0.3)
    other = ControlConfig(plan_horizon=7, sample=True, population=40, elites=4, iterations=2)
    planner = _planner(model, env, other, explore=0.0, seed=1)
    assert (planner.horizon, planner.sample, planner.population, planner.elites,
            planner.iterations) == (7, True, 40, 4, 2)
    assert planner.plan(env.reset()).shape == (7, 1)


def test_cli_planning_flags_reach_the_config(tmp_path, monkeypatch, capsys):
    import bjepa.experiments.control as control

    seen = []

    def fake_run(cfg, folder, **_):
        seen.append(cfg)
        return []

    monkeypatch.setattr(control, "run", fake_run)
    assert main(["control", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["control", "--sample-planning", "--plan-horizon", "9", "--out",
                 str(tmp_path / "b"), "--no-progress"]) == 0
    assert main(["control", "--mean-planning", "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    assert [(c.sample, c.plan_horizon) for c in seen] == [(False, 20), (True, 9), (False, 20)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["control", "--mean-planning", "--sample-planning"])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert main(["control", "--plan-horizon", "0", "--out", str(tmp_path / "d")]) == 2
    assert "plan_horizon must be" in capsys.readouterr().err


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="models"):
        ControlConfig(models=["dreamer"]).validate()
    with pytest.raises(ValueError, match="elites"):
        ControlConfig(population=10, elites=20).validate()
    with pytest.raises(ValueError, match="max_episode_steps"):
        ControlConfig(max_episode_steps=3, horizon=5).validate()
    assert summarise([]) == []


def test_cli_quick_writes_the_run_folder_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["control", "--quick", "--models", "vjepa,recon", "--distractor-dims", "4",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| vjepa | 4 |" in printed and "| recon | 4 |" in printed
    for name in ("config.json", "results.csv", "results.json", "summary.json", "curves.png",
                 "metrics.jsonl"):
        assert (out / name).exists(), name
    rows = json.loads((out / "results.json").read_text())
    assert {(r["model"], r["distractor_dims"]) for r in rows} == {("vjepa", 4), ("recon", 4)}
    assert all(np.isfinite(r["eval_return"]) for r in rows if r["eval_return"] is not None)
    finals = [r for r in rows if "final_return" in r]
    assert len(finals) == 2 and all(r["episode"] == 2 for r in finals)
    assert main(["control", "--quick", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text()) == rows  # finished: read back
    # --overwrite starts again: a run of other settings left no checkpoint to resume from
    fresh, again = tmp_path / "fresh", tmp_path / "again"
    assert main(["control", "--quick", "--out", str(fresh), "--no-progress"]) == 0
    assert main(["control", "--quick", "--steps", "3", "--out", str(again), "--no-progress"]) == 0
    assert main(["control", "--quick", "--out", str(again), "--overwrite", "--no-progress"]) == 0
    strip = [{k: v for k, v in r.items() if k != "wall_s"}
             for r in json.loads((fresh / "results.json").read_text())]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"}
                     for r in json.loads((again / "results.json").read_text())]
    report = tmp_path / "report"
    assert main(["control", "--report", str(out), "--out", str(report)]) == 0
    assert json.loads((report / "results.json").read_text()) == rows
    assert (report / "curves.png").exists()
    capsys.readouterr()
    assert main(["control", "--report", str(tmp_path), "--out", str(tmp_path / "r2")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["control", "--quick", "--task", "cartpole-nope", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "not in the dm-control suite" in capsys.readouterr().err


def _renders():
    from bjepa.data.dmc import pick_renderer

    try:
        pick_renderer()
        DMCEnv(pixels=True, size=16).reset()
    except Exception as err:  # noqa: BLE001 - any failure means: no OpenGL here
        return str(err)
    return None


def test_pixel_observations_and_the_conv_models_run_end_to_end(tmp_path):
    why = _renders()
    if why is not None:
        pytest.skip(f"no OpenGL back-end for rendering: {why[:120]}")
    env = DMCEnv(pixels=True, size=32, distractor_dims=16, sigma=0.5, seed=0)
    o0 = env.reset()
    assert o0.shape == (2 * 32 * 32,)
    f = o0.reshape(2, 32, 32)
    np.testing.assert_array_equal(f[0], f[1])  # a fresh stack repeats the first frame
    o1 = env.step(np.ones(1))[0].reshape(2, 32, 32)
    np.testing.assert_array_equal(o1[0], f[1])  # the stack shifts by one frame
    patch = o1[1, 8:24, 8:24] - f[1, 8:24, 8:24]
    assert patch.std() > 0.3  # the noise patch is redrawn
    cfg = ControlConfig.quick(pixels=True, size=32, distractor_dims=[8], max_episode_steps=8,
                              train_steps=3, batch_size=16, episodes=1, eval_every=1)
    for model in ("vjepa", "recon"):
        rows = run_seed(cfg, model, 8, 0)
        assert np.isfinite(rows[-1]["eval_return"]) and np.isfinite(rows[-1]["loss"])
    with pytest.raises(ValueError, match="noise-patch sides"):
        ControlConfig(pixels=True, size=32, distractor_dims=[40]).validate()


@pytest.mark.cuda
def test_control_loop_runs_on_cuda():
    cfg = ControlConfig.quick(episodes=1, eval_every=1, max_episode_steps=12, train_steps=5)
    rows = run_seed(cfg, "vjepa", 2, 0, device="cuda")
    assert np.isfinite(rows[-1]["eval_return"]) and np.isfinite(rows[-1]["loss"])
