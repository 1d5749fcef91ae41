"""``bjepa bayes``: the ensemble's mixture, BJEPA's posterior predictive against its plug-in,
the probe push-forward, the shifted test sets, the posterior planner and a small run."""

import json
import math

import numpy as np
import pytest
import torch

from bjepa.cli import main
from bjepa.experiments import bayes
from bjepa.inference import fit
from bjepa.models import BJEPA, VJEPA


@pytest.fixture(scope="module")
def data():
    cfg = bayes.BayesConfig(test_frames=300)
    return cfg, *bayes.make_data(cfg, 120, 3)


def test_ensemble_is_the_equal_weight_mixture_in_member_zero_space(data):
    cfg, train, tests = data
    members = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        m = VJEPA(20, 4)
        fit(m, train.context, train.target, steps=30, lr=3e-3, seed=seed, progress=False)
        members.append(m.eval())
    test = tests["in"]
    mix, maps = bayes.ensemble_predictive(members, test.context, train.context)
    torch.testing.assert_close(maps[0][0], torch.eye(4, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(maps[0][1], torch.zeros(4, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    y = members[0].encode_target(test.target).double()
    parts = []
    for m, (M, c) in zip(members, maps, strict=True):
        d = m.predict(test.context)
        loc = d.mean.double() @ M + c
        cov = M.T @ torch.diag_embed(d.variance.double()) @ M
        parts.append(torch.distributions.MultivariateNormal(loc, covariance_matrix=cov
                                                            + 1e-9 * torch.eye(4)))
    want = torch.logsumexp(torch.stack([p.log_prob(y) for p in parts]), 0) - math.log(3)
    torch.testing.assert_close(mix.log_prob(y), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mix.mean, sum(p.mean for p in parts) / 3)
    # law of total variance: the mixture is wider than the average member by the spread
    within = sum(p.variance for p in parts) / 3
    between = sum((p.mean - mix.mean) ** 2 for p in parts) / 3
    torch.testing.assert_close(mix.variance, within + between)


def test_posterior_predictive_is_wider_than_the_plug_in_with_few_data(data):
    cfg, train, tests = data
    torch.manual_seed(0)
    m = BJEPA(20, 4, weight_prior="normal", gamma=0.0, guide_init_scale=0.05)
    fit(m, train.context[:40], train.target[:40], steps=80, lr=3e-3, seed=0, progress=False)
    m.eval()
    ctx = tests["amplitude"].context
    torch.manual_seed(1)
    w, loc, scale = bayes.predictive_parts(m, ctx, num_samples=200)
    assert loc.shape == (len(ctx), 200, 4)
    _, ploc, pscale = bayes.plugin_parts(m, ctx)
    total = (w[None, :, None] * (scale**2 + loc**2)).sum(1) - (
        w[None, :, None] * loc).sum(1) ** 2
    # E[s(w)²] ≥ s(E w)² (softplus² is convex; the AutoNormal median is its mean) and the
    # spread of the means adds on top
    assert (total.mean(0) > pscale[:, 0].pow(2).mean(0)).all()
    assert bayes._epistemic(w, loc, scale) > 0.01


def test_probe_push_forward_matches_monte_carlo():
    torch.manual_seed(0)
    loc = torch.randn(5, 1, 3)
    scale = torch.rand(5, 1, 3) + 0.2
    B, b, r = torch.randn(3, 2), torch.randn(2), torch.rand(2) + 0.1
    d = bayes.probe_predictive([(torch.ones(1), loc, scale, (B, b, r))])
    z = loc[:, 0] + scale[:, 0] * torch.randn(200_000, 5, 3)
    y = (z @ B + b + r * torch.randn(200_000, 5, 2)).double()
    torch.testing.assert_close(d.mean, y.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(d.variance, y.var(0), rtol=0.03, atol=0.0)


def test_shifted_test_sets(data):
    cfg, train, tests = data
    assert set(tests) == set(bayes.REGIMES)
    amp = tests["amplitude"].state.norm(dim=1)
    assert amp.min() > 2.0 * train.state.norm(dim=1).max()  # outside the training range
    assert len(train) == 119  # pairs inside one 120-frame trajectory
    assert len(tests["in"]) == 3 * 119  # three 120-frame trajectories, no pair across joins
    params = bayes.noisy_tv.make_params(cfg.sigma, rng=np.random.default_rng(3))
    A = params.A
    for regime, dyn in [("in", A), ("rotation", A @ A)]:
        s = tests[regime].state[:119].double().numpy()  # s_1 ... s_119 of one trajectory
        right = s[1:] - s[:-1] @ dyn.T
        wrong = s[1:] - s[:-1] @ (A @ A if regime == "in" else A).T
        assert abs(right.std() - params.signal_noise) < 0.02, regime
        assert wrong.std() > 3 * params.signal_noise, regime


def test_posterior_planner_spreads_rollouts_over_weight_draws():
    from bjepa.data import control
    from bjepa.experiments import mpc
    from bjepa.models.action import ActionBJEPA, ActionVJEPA
    from bjepa.planning import LatentTask, PosteriorSamplingPlanner, WeightDraw

    mcfg = mpc.MPCConfig()
    params = mpc.make_params(mcfg, 0)
    data = control.explore(params, 60, 0)
    x, u, y = data.pairs
    m = ActionBJEPA(20, 2, action_dim=2, weight_prior="normal", gamma=0.0,
                    target_scale_init=0.01)
    fit(m, m.pack(x, u), y, steps=40, lr=3e-3, seed=0, progress=False)
    m.eval()
    task = mpc.make_task(m, data)
    planner = PosteriorSamplingPlanner(m, task, num_draws=4, num_samples=8, horizon=3,
                                       num_candidates=16, num_elites=4, iterations=2, seed=0)
    z0 = m.encode(data.frames[:2])
    planner._prepare(z0)
    assert len(planner._draws) == 4
    z, a = torch.zeros(1, 2), torch.ones(1, 2)
    means = torch.stack([d.transition(z, a).mean for d in planner._draws])
    assert means.std(0).max() > 0  # different predictors
    draws = m.weight_samples(2)
    one = WeightDraw(m, {k: v[0] for k, v in draws.items()})
    W = next(v[0] for k, v in draws.items() if k.endswith("weight"))
    bias = next(v[0] for k, v in draws.items() if k.endswith("bias"))
    want = torch.cat([z, a], 1) @ W.T + bias
    torch.testing.assert_close(one.transition(z, a).mean, want[:, :2])
    planner.reset(2)
    act = planner.act(data.frames[:2])
    assert act.shape == (2, 2) and torch.isfinite(act).all()
    v = ActionVJEPA(20, 2, action_dim=2)
    with pytest.raises(TypeError, match="weight prior"):
        PosteriorSamplingPlanner(v, task)
    with pytest.raises(ValueError, match="multiple of num_draws"):
        PosteriorSamplingPlanner(m, task, num_draws=3, num_samples=8)
    assert isinstance(task, LatentTask)


def test_small_run_writes_the_folder_and_sane_numbers(tmp_path):
    from bjepa.runs import RunFolder

    out = tmp_path / "run"
    cfg = bayes.BayesConfig.quick(
        n_frames=[80, 150], steps=30, models=["vjepa", "ensemble", "bjepa-normal",
                                              "bjepa-nuts"],
        ensemble_size=2, regimes=["in", "amplitude"], weight_draws=10, test_frames=150,
        nuts_warmup=20, nuts_samples=20, plan_frames=[60], plan_episodes=2, plan_steps=30,
        plan_horizon=3, plan_candidates=16, plan_samples=4, plan_draws=2,
        plan_planners=["oracle", "bjepa-posterior"], progress=False)
    with RunFolder(out) as folder:
        bayes.run(cfg, folder)
    for name in ["config.json", "results.csv", "results.json", "planning.json",
                 "summary.json", "table.md", "calibration_vs_n.png", "sd_in_vs_out.png",
                 "planning.png"]:
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())
    streamed = (out / "results.jsonl").read_text().splitlines()  # written as units end
    assert [json.loads(line) for line in streamed] == rows
    # NUTS only up to nuts_max_frames (100 in the quick configuration)
    assert {(r["model"], r["n_frames"]) for r in rows if r["model"] == "bjepa-nuts"} == {
        ("bjepa-nuts", 80)}
    assert len(rows) == (3 * 2 + 1) * 2
    for r in rows:
        for k in ("lat_cov90", "state_cov90"):
            assert 0.0 <= r[k] <= 1.0
        assert math.isfinite(r["state_nll"]) and r["state_sd"] > 0 and r["lat_sd"] > 0
        assert 0.0 <= r["lat_epistemic"] < 1.0
    # a point predictor has no epistemic share; the weight posterior has some
    assert all(r["lat_epistemic"] == 0.0 for r in rows if r["model"] == "vjepa")
    assert all(r["lat_epistemic"] > 0.0 for r in rows if r["model"] == "bjepa-normal")
    plan = json.loads((out / "planning.json").read_text())
    assert [r["planner"] for r in plan] == ["oracle", "bjepa-posterior"]
    assert plan[0]["cost_vs_oracle"] == 1.0 and plan[1]["cost"] > 0
    assert "| model |" in (out / "table.md").read_text()


def test_bad_configuration_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="bjepa-normal"):
        bayes.BayesConfig(models=["vjepa", "bjepa-nuts"]).validate()
    with pytest.raises(ValueError, match="n_frames"):
        bayes.BayesConfig(n_frames=[5]).validate()
    with pytest.raises(ValueError, match="multiple"):
        bayes.BayesConfig(plan_samples=10, plan_draws=4).validate()
    with pytest.raises(SystemExit):
        main(["bayes", "--models", "gpt", "--out", str(tmp_path / "x")])
    assert "--models must be a comma list" in capsys.readouterr().err
    assert main(["bayes", "--steps", "0", "--out", str(tmp_path / "y")]) == 2
    assert "steps" in capsys.readouterr().err


def test_quick_cli(tmp_path):
    """`bjepa bayes --quick` end to end (about 50 s of CPU): the command users run first."""
    rc = main(["bayes", "--quick", "--out", str(tmp_path / "q"), "--no-progress"])
    assert rc == 0
    rows = json.loads((tmp_path / "q" / "results.json").read_text())
    assert {r["model"] for r in rows} == set(bayes.MODELS)
