"""Diagnostics (issue 5): calibration, collapse, importance sampling, InferenceData
export and ``bjepa diagnose``.

See docs/method.md#diagnostics."""

import copy
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroSample, pyro_method

from bjepa.cli import main
from bjepa.data import noisy_tv
from bjepa.diagnostics import (
    LEVELS,
    Forecast,
    calibrate,
    collapse_diagnostics,
    collapse_from_moments,
    diagnose_model,
    effective_rank,
    guide_psis_khat,
    loo_summary,
    render_markdown,
    save_inference_data,
    to_inference_data,
    write_diagnosis,
)
from bjepa.inference import fit
from bjepa.inference.checkpoint import save_checkpoint
from bjepa.models import JEPA, VJEPA

TRAIN_STEPS = 150  # SVI steps for the trained fixtures (lr 1e-2): seconds on 2 CPU cores


def _raw_scale(s: float) -> float:
    """Inverse of the heads' ``softplus(raw) + 1e-4`` scale map."""
    return math.log(math.expm1(s - 1e-4))


def exact_linear_gaussian(n: int = 4000, d: int = 4, rho: float = 0.8, seed: int = 0):
    """Data drawn from the model itself: ``z_{t+1} = A z_t + q ε`` (stationary N(0, I),
    A = ρ·orthogonal, q² = 1 − ρ²), observed as ``x_t = z_t``; and a VJEPA set to exactly that
    model — identity context/target encoders, predictor ``N(A z_C, q² I)``, target posterior
    ``N(x_T, (10⁻³)²)`` (noise-free observations of the latent)."""
    g = torch.Generator().manual_seed(seed)
    a = rho * torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    q = math.sqrt(1 - rho**2)
    z = torch.empty(n + 1, d)
    z[0] = torch.randn(d, generator=g)
    noise = torch.randn(n, d, generator=g)
    for t in range(n):
        z[t + 1] = a @ z[t] + q * noise[t]
    m = VJEPA(d, d, encoder="linear")
    with torch.no_grad():
        m.context_encoder.weight.copy_(torch.eye(d))
        m.target_encoder.weight.copy_(torch.eye(d))
        w, b = list(m.target_scale_net.parameters())
        w.zero_()
        b.fill_(_raw_scale(1e-3))
        net = m.predictor.net
        net.weight.zero_()
        net.weight[:d].copy_(a)
        net.bias.zero_()
        net.bias[d:].fill_(_raw_scale(q))
    return m, z[:-1], z[1:]


@pytest.fixture(scope="module")
def split():
    return noisy_tv.make_split(4.0, 0, train_steps=600, test_steps=400)


def _train(split, **kwargs) -> VJEPA:
    train, _ = split
    pyro.clear_param_store()
    torch.manual_seed(0)
    m = VJEPA(20, 4, **kwargs)
    fit(m, train.obs[:-1], train.obs[1:], steps=TRAIN_STEPS, lr=1e-2, progress=False)
    return m


@pytest.fixture(scope="module")
def vjepa(split):
    return _train(split, beta=0.01)


# -- scores against closed forms ---------------------------------------------------------------
def _numeric_crps(cdf, y: float, lo: float, hi: float) -> float:
    """∫ (F(x) − 1{x ≥ y})² dx by the trapezoid rule, split at the jump at ``y``."""
    below = torch.linspace(lo, y, 200_001, dtype=torch.float64)
    above = torch.linspace(y, hi, 200_001, dtype=torch.float64)
    return float(torch.trapezoid(cdf(below) ** 2, below)
                 + torch.trapezoid((1 - cdf(above)) ** 2, above))


def test_crps_closed_forms_match_the_defining_integral():
    loc = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    scale = torch.tensor([[0.7, 2.0]], dtype=torch.float64)
    y = torch.tensor([[1.1, -0.4]], dtype=torch.float64)
    fc = Forecast.from_distribution(dist.Normal(loc, scale).to_event(1))
    got = fc.crps(y)
    for j in range(2):
        def cdf(x, j=j):
            return torch.special.ndtr((x - loc[0, j]) / scale[0, j])
        assert got[0, j].item() == pytest.approx(_numeric_crps(cdf, y[0, j].item(), -30, 30),
                                                 abs=1e-6)
    # a 3-component Gaussian mixture with unequal weights (the MDN / weight-posterior case)
    w = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    mloc = torch.tensor([[[-2.0], [0.5], [3.0]]], dtype=torch.float64)
    mscale = torch.tensor([[[0.5], [1.0], [0.3]]], dtype=torch.float64)
    mix = dist.MixtureSameFamily(dist.Categorical(probs=w), dist.Normal(mloc, mscale).to_event(1))
    fm = Forecast.from_distribution(mix)
    assert fm.kind == "gaussian mixture"

    def mix_cdf(x):
        return (w[0] * torch.special.ndtr((x[:, None] - mloc[0, :, 0]) / mscale[0, :, 0])).sum(1)

    yy = torch.tensor([[0.9]], dtype=torch.float64)
    assert fm.crps(yy).item() == pytest.approx(_numeric_crps(mix_cdf, 0.9, -30, 30), abs=1e-6)
    assert fm.cdf(yy).item() == pytest.approx(mix_cdf(yy[0]).item(), abs=1e-12)


def test_sample_based_scores_agree_with_closed_forms():
    torch.manual_seed(1)
    loc, scale = torch.randn(6, 3), torch.rand(6, 3) + 0.3
    d = dist.Normal(loc, scale).to_event(1)
    y = d.sample()
    exact = Forecast.from_distribution(d)
    draws = Forecast.from_samples(d.sample((50_000,)))
    assert draws.kind == "samples" and exact.kind == "gaussian"
    # Monte Carlo error ≲ scale / sqrt(S) ≈ 0.006: tolerances of several standard errors
    torch.testing.assert_close(draws.crps(y), exact.crps(y), atol=0.025, rtol=0)
    torch.testing.assert_close(draws.cdf(y), exact.cdf(y), atol=0.01, rtol=0)
    torch.testing.assert_close(draws.mean, exact.mean.double(), atol=0.02, rtol=0)


# -- calibration -------------------------------------------------------------------------------
def _forecast_and_data(kind: str, n: int = 2000, d: int = 3):
    torch.manual_seed(2)
    loc = torch.randn(n, d)
    if kind == "diag":
        p = dist.Normal(loc, torch.rand(n, d) + 0.2).to_event(1)
    elif kind == "full":
        a = torch.randn(d, d)
        p = dist.MultivariateNormal(loc, covariance_matrix=a @ a.T + 0.3 * torch.eye(d))
    elif kind == "mixture":  # an MDN head's output
        k = 3
        p = dist.MixtureSameFamily(dist.Categorical(logits=torch.randn(n, k)),
                                   dist.Normal(3 * torch.randn(n, k, d),
                                               torch.rand(n, k, d) + 0.2).to_event(1))
    elif kind == "student-t":  # no closed form here: reduced to draws
        p = dist.StudentT(4.0, loc, torch.rand(n, d) + 0.2).to_event(1)
    else:
        raise ValueError(kind)
    return p, p.sample()


@pytest.mark.parametrize("kind,forecast_kind", [
    ("diag", "gaussian"), ("full", "gaussian"), ("mixture", "gaussian mixture"),
    ("student-t", "samples")])
def test_draws_from_the_predictive_are_calibrated(kind, forecast_kind):
    p, y = _forecast_and_data(kind)
    r = calibrate(p, y)
    assert r.forecast_kind == forecast_kind
    assert r.verdict == "calibrated", r.reasons
    assert np.all(np.abs(np.array(r.coverage) - np.array(LEVELS)) <= 0.03)
    assert r.ks_pvalue >= 0.01
    assert r.nll is not None and math.isfinite(r.nll)


def test_correctly_specified_linear_gaussian_is_calibrated_and_healthy():
    m, context, target = exact_linear_gaussian()
    diag = diagnose_model(m, context, target, num_samples=50)
    cal = diag.calibration
    dev = np.abs(np.array(cal.coverage_per_dim) - np.array(LEVELS)[:, None])
    assert dev.max() <= 0.03, cal.coverage_per_dim  # every level, every dimension
    assert np.all(np.abs(np.array(cal.coverage) - np.array(LEVELS)) <= 0.03)
    assert cal.ks_pvalue >= 0.01 and min(cal.ks_pvalue_per_dim) >= 0.01
    assert cal.verdict == "calibrated"
    assert diag.mean_calibration.verdict == "calibrated"
    assert diag.collapse.verdict == "healthy"
    assert diag.verdict == "healthy" and diag.reasons == []
    # the NLL is the exact Gaussian one: D/2 log(2π q²) + E χ²_D / 2
    q2 = 1 - 0.8**2
    expected = 0.5 * 4 * math.log(2 * math.pi * q2) + 0.5 * 4
    assert cal.nll == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("source", ["exact", "trained"])
@pytest.mark.parametrize("factor,verdict", [(0.5, "overconfident"), (2.0, "underconfident")])
def test_rescaled_predictive_is_flagged(source, factor, verdict, vjepa, split):
    if source == "exact":
        m, context, target = exact_linear_gaussian(n=2000)
    else:
        m, (_, test) = vjepa, split
        context, target = test.obs[:-1], test.obs[1:]
    pred = m.predict(context)
    wrapped = dist.Normal(pred.mean, factor * pred.stddev).to_event(1)
    torch.manual_seed(3)
    observed = m.target_dist(target).sample((10,))  # draws of the next latent from q
    r = calibrate(wrapped, observed)
    assert r.verdict == verdict, r.reasons
    cov90 = r.coverage_at(0.9)
    assert cov90 < 0.85 if factor < 1 else cov90 > 0.95


# -- collapse ----------------------------------------------------------------------------------
def test_vjepa_with_small_beta_is_healthy(vjepa, split):
    _, test = split
    r = collapse_diagnostics(vjepa, test.obs[:-1], test.obs[1:])
    assert r.verdict == "healthy", r.reasons
    assert r.n_active == r.n_informative == 4
    assert r.effective_rank > 2.0
    assert all(k > 0.1 for k in r.kl_per_dim)


def test_constant_encoder_is_collapsed(vjepa, split):
    _, test = split
    m = copy.deepcopy(vjepa)
    with torch.no_grad():
        m.context_encoder.weight.zero_()
        m.target_encoder.weight.zero_()
    r = collapse_diagnostics(m, test.obs[:-1], test.obs[1:])
    assert r.verdict == "collapsed"
    assert r.context_constant and r.effective_rank == 0.0 and r.n_active == 0
    assert any("constant" in reason for reason in r.reasons)


def test_vjepa_with_large_beta_is_not_healthy(split):
    # σ_q starts where a β = 10 optimum puts it, σ_q² = (β − 1)/β ≈ 0.9, so that a short run
    # shows the steady state (the EMA target mean gets no KL gradient, so the KL acts on σ_q)
    _, test = split
    m = _train(split, beta=10.0, target_scale_init=0.9)
    r = collapse_diagnostics(m, test.obs[:-1], test.obs[1:])
    assert r.verdict in ("partial collapse", "collapsed"), r.reasons
    assert r.n_informative < 4
    assert any("prior" in reason for reason in r.reasons)
    assert max(r.posterior_variance_prior_units) > 0.2  # q(z_T | x_T) widened towards N(0, I)


def test_collapse_statistics_scale_invariance_and_dead_units():
    torch.manual_seed(4)
    n = 500
    loc = torch.randn(n, 4)
    loc[:, 2] = 0.3  # a dead unit: its posterior mean ignores the input
    scale = torch.full((n, 4), 0.1)
    z = torch.randn(n, 4)
    r = collapse_from_moments(loc, scale, z)
    assert r.active == [True, True, False, True]
    assert r.verdict == "partial collapse"
    # rescaling the latent (an arbitrary linear encoder's scale) changes nothing but the KL
    big = collapse_from_moments(1000 * loc, 1000 * scale, 1000 * z)
    np.testing.assert_allclose(big.share_explained, r.share_explained, rtol=1e-9)
    assert big.active == r.active and big.effective_rank == pytest.approx(r.effective_rank)
    # effective rank: white → D, one direction → 1, constant → 0
    assert effective_rank(torch.randn(5000, 4))[0] == pytest.approx(4.0, abs=0.05)
    assert effective_rank(torch.randn(500, 1) * torch.ones(1, 4))[0] == pytest.approx(1.0,
                                                                                   abs=1e-6)
    assert effective_rank(torch.ones(50, 4))[0] == 0.0


# -- models without a predictive distribution ---------------------------------------------------
def test_deterministic_jepa_is_explained_not_crashed(split, tmp_path):
    _, test = split
    m = JEPA(20, 4)
    diag = diagnose_model(m, test.obs[:-1], test.obs[1:])
    assert diag.calibration is None and diag.idata is None and diag.loo is None
    assert "deterministic" in diag.calibration_note
    assert diag.collapse.deterministic and diag.collapse.kl_per_dim is None
    files = write_diagnosis(diag, tmp_path / "jepa")
    assert "calibration" not in files and "inference_data" not in files
    assert "deterministic" in files["report"].read_text()
    with pytest.raises(ValueError, match="deterministic"):
        to_inference_data(m, test.obs[:-1], test.obs[1:])


# -- InferenceData -----------------------------------------------------------------------------
ROUNDTRIP = textwrap.dedent("""
    import json, sys
    sys.modules["bjepa"] = None  # any import of this library now fails
    import warnings
    warnings.simplefilter("ignore")
    import arviz as az
    import xarray
    idata = az.from_netcdf(sys.argv[1])
    out = {g: {v: [list(idata[g][v].dims), float(idata[g][v].values.sum())]
               for v in idata[g].data_vars} for g in idata.groups()}
    out["loo_points"] = int(az.loo(idata, var_name="z_target_joint").n_data_points)
    out["bjepa_imported"] = any(k.startswith("bjepa") and sys.modules[k] is not None
                                for k in sys.modules)
    print(json.dumps(out))
""")


def test_inference_data_groups_and_plain_arviz_netcdf_roundtrip(vjepa, split, tmp_path):
    _, test = split
    ctx, tgt = test.obs[:200], test.obs[1:201]
    state = torch.get_rng_state()
    idata = to_inference_data(vjepa, ctx, tgt, num_samples=30, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data",
                                   "log_likelihood", "prior"}
    post = idata.posterior["z_target"]
    assert post.dims == ("chain", "draw", "time", "latent_dim") and post.shape == (1, 30, 200, 4)
    assert idata.posterior_predictive["z_target"].dims == ("chain", "draw", "time", "latent_dim")
    assert idata.observed_data["z_target"].dims == ("time", "latent_dim")
    assert idata.log_likelihood["z_target"].dims == ("chain", "draw", "time", "latent_dim")
    assert idata.log_likelihood["z_target_joint"].dims == ("chain", "draw", "time")
    # observed = the target encoder's latent; log-likelihood = the predictor at the observed
    # value (ArviZ's convention), per dimension and joint
    np.testing.assert_allclose(idata.observed_data["z_target"].values,
                               vjepa.encode_target(tgt).numpy(), rtol=1e-6)
    obs = torch.as_tensor(idata.observed_data["z_target"].values)
    expected = vjepa.predict(ctx).log_prob(obs).expand(30, -1).numpy()
    np.testing.assert_allclose(idata.log_likelihood["z_target_joint"].values[0], expected,
                               rtol=1e-4, atol=1e-4)
    again = to_inference_data(vjepa, ctx, tgt, num_samples=30, seed=5)
    np.testing.assert_array_equal(again.posterior["z_target"].values, post.values)
    loo = loo_summary(idata)
    assert loo["n_data_points"] == 200 and loo["n_samples"] == 30

    path = save_inference_data(idata, tmp_path / "idata.nc")
    out = subprocess.run([sys.executable, "-c", ROUNDTRIP, str(path)], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["bjepa_imported"] is False
    for group in idata.groups():
        for var in idata[group].data_vars:
            dims, total = got[group][var]
            assert tuple(dims) == idata[group][var].dims
            assert total == pytest.approx(float(idata[group][var].values.sum()), rel=1e-6)
    assert got["loo_points"] == 200


# -- weight posteriors and PSIS ------------------------------------------------------------------
class BayesianDiagonalPredictor(PyroModule):
    """A tiny world model with a *global* latent: ``w ~ N(0, I)``, ``z_T = w ⊙ z_C + N(0, s²)``
    with identity encoders. Its weight posterior is Gaussian in closed form, and
    ``weight_guide`` is that posterior with a chosen scale factor."""

    def __init__(self, context, target, noise=0.5, guide_scale=1.0, vectorizable=True):
        super().__init__()
        self.obs_dim = self.latent_dim = context.shape[1]
        self.noise, self.vectorizable = noise, vectorizable
        self.w = PyroSample(dist.Normal(torch.zeros(self.obs_dim), 1.0).to_event(1))
        prec = 1.0 + (context**2).sum(0) / noise**2
        self.post_loc = ((context * target).sum(0) / noise**2) / prec
        self.post_scale = guide_scale * prec.rsqrt()
        self.weight_guide = self.weight_posterior

    def encode(self, x):
        return x

    def encode_target(self, x):
        return x

    def target_dist(self, x):
        return dist.Normal(x, 1e-3).to_event(1)

    @pyro_method
    def predictive_dist(self, context):
        w = self.w
        loc = context * w if self.vectorizable else F.linear(context, torch.diag(w))
        return dist.Normal(loc, self.noise).to_event(1)

    @pyro_method
    def model(self, context, target, batch_size=None):
        pred = self.predictive_dist(context)
        with pyro.plate("data", context.shape[0]):
            pyro.sample("z_target", pred, obs=target)

    @pyro_method
    def weight_posterior(self, context, target, batch_size=None):
        return pyro.sample("w", dist.Normal(self.post_loc, self.post_scale).to_event(1))

    def guide(self, context, target, batch_size=None):
        self.weight_posterior(context, target)


def _regression_data(n=200, seed=6):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 3, generator=g)
    return c, c * torch.tensor([0.8, -0.5, 0.3]) + 0.5 * torch.randn(n, 3, generator=g)


def test_guide_psis_khat_separates_good_and_overconfident_guides():
    # a Gaussian proposal with variance ratio r to the target has Pareto tail index 1 − r:
    # the exact posterior (r = 1) gives k̂ < 0.5, a guide 10× too narrow (r = 0.01) k̂ ≈ 1
    c, t = _regression_data()
    good = guide_psis_khat(BayesianDiagonalPredictor(c, t, guide_scale=1.0), c, t)
    assert good["available"] and good["sites"] == ["w"]
    assert good["khat"] < 0.5 and "vectorised" in good["method"]
    bad = guide_psis_khat(BayesianDiagonalPredictor(c, t, guide_scale=0.1), c, t,
                          num_particles=2000)
    assert bad["khat"] > 0.7 and bad["verdict"].startswith("poor")
    # a program that cannot be vectorised over particles falls back to one particle at a time
    seq = guide_psis_khat(BayesianDiagonalPredictor(c, t, guide_scale=0.1, vectorizable=False),
                          c, t, num_particles=2000)
    assert seq["method"].startswith("sequential") and seq["khat"] > 0.7


def test_weight_posterior_is_exported_and_integrated(tmp_path):
    c, t = _regression_data()
    m = BayesianDiagonalPredictor(c, t)
    idata = to_inference_data(m, c, t, num_samples=40)
    w = idata.posterior["w"]
    assert w.dims == ("chain", "draw", "w_dim_0") and w.shape == (1, 40, 3)
    # 40 exact posterior draws: their mean is within 4 standard errors (σ_post / √40) of the
    # posterior mean, and their spread within 40 % of σ_post
    se = m.post_scale.numpy() / math.sqrt(40)
    assert (np.abs(w.values[0].mean(0) - m.post_loc.numpy()) < 4 * se).all()
    np.testing.assert_allclose(w.values[0].std(0, ddof=1), m.post_scale.numpy(), rtol=0.4)
    diag = diagnose_model(m, c, t, num_samples=50)
    assert diag.calibration.forecast_kind == "gaussian mixture"  # mixed over weight draws
    assert diag.calibration.verdict == "calibrated" and diag.guide_psis["khat"] < 0.5
    assert diag.verdict == "healthy", diag.reasons


def test_bjepa_weight_posterior_is_exported(split):
    from bjepa.models import BJEPA

    _, test = split
    ctx, tgt = test.obs[:200], test.obs[1:201]
    m = BJEPA(20, 4, weight_prior="normal")  # its weight guide is built eagerly
    idata = to_inference_data(m, ctx, tgt, num_samples=10)
    w = idata.posterior["predictor_net_weight"]
    assert w.dims[:2] == ("chain", "draw") and w.shape[:2] == (1, 10) and w.ndim == 4
    assert float(w.std("draw").mean()) > 0  # draws differ: a posterior, not a point
    psis = guide_psis_khat(m, ctx, tgt, num_particles=100)
    assert psis["available"] and "weight_likelihood" in psis["target"]
    assert sorted(psis["sites"]) == sorted(m.weight_site_names)  # found the global sites


def test_models_without_global_latents_say_why_no_psis(vjepa, split):
    _, test = split
    r = guide_psis_khat(vjepa, test.obs[:-1], test.obs[1:])
    assert r["available"] is False and "per observation" in r["reason"]


# -- files and CLI -----------------------------------------------------------------------------
def test_report_states_verdicts_in_words(vjepa, split, tmp_path):
    _, test = split
    train, _ = split
    diag = diagnose_model(vjepa, test.obs[:-1], test.obs[1:], num_samples=30,
                          true_state=test.signal[1:],
                          probe_train=(vjepa.encode_target(train.obs[1:]), train.signal[1:]))
    assert diag.state_calibration is not None
    files = write_diagnosis(diag, tmp_path / "d")
    text = files["report"].read_text()
    assert f"## Calibration: {diag.calibration.verdict}" in text
    assert f"## Posterior collapse: {diag.collapse.verdict}" in text
    assert "](calibration.png)" in text and "](collapse.png)" in text
    assert "Probe-mapped true state" in text
    payload = json.loads(files["json"].read_text())
    assert payload["verdict"] == diag.verdict
    assert payload["calibration"]["levels"] == list(LEVELS)
    assert render_markdown(diag, {k: p.name for k, p in files.items()}) == text
    for name in ("calibration", "collapse"):
        assert files[name].stat().st_size > 20_000  # a real figure, not an empty canvas


def test_cli_diagnoses_a_noisy_tv_run(vjepa, tmp_path, capsys):
    # the layout and checkpoint meta `bjepa noisy-tv --out run` writes
    run = tmp_path / "run"
    meta = {"sigma": 4.0, "seed": 0, "data": "noisy_tv", "train_steps": 600, "test_steps": 400}
    save_checkpoint(run / "checkpoints" / "vjepa-sigma4-seed0.pt", vjepa,
                    meta={"model": "vjepa", **meta})
    save_checkpoint(run / "checkpoints" / "jepa-sigma4-seed0.pt", JEPA(20, 4),
                    meta={"model": "jepa", **meta})
    assert main(["diagnose", str(run), "--num-samples", "30", "--max-rows", "300"]) == 0
    out = capsys.readouterr().out
    assert "vjepa-sigma4-seed0" in out and "jepa-sigma4-seed0" in out
    vj = run / "diagnostics" / "vjepa-sigma4-seed0"
    for name in ["diagnostics.json", "inference_data.nc", "calibration.png", "collapse.png",
                 "report.md"]:
        assert (vj / name).stat().st_size > 0, name
    payload = json.loads((vj / "diagnostics.json").read_text())
    assert payload["meta"]["sigma"] == 4.0 and payload["settings"]["rows"] == 300
    assert payload["collapse"]["verdict"] == "healthy"
    assert payload["state_calibration"] is not None
    jp = run / "diagnostics" / "jepa-sigma4-seed0"
    assert "deterministic" in (jp / "report.md").read_text()
    assert not (jp / "inference_data.nc").exists()
    summary = (run / "diagnostics" / "summary.md").read_text()
    assert "(vjepa-sigma4-seed0/report.md)" in summary

    other = tmp_path / "only-one"
    assert main(["diagnose", str(run), "--checkpoint", "vjepa-sigma4-seed0", "--out",
                 str(other), "--num-samples", "10", "--max-rows", "100"]) == 0
    assert sorted(p.name for p in other.iterdir() if p.is_dir()) == ["vjepa-sigma4-seed0"]
    assert main(["diagnose", str(run), "--checkpoint", "nope"]) == 2
    assert "available: jepa-sigma4-seed0, vjepa-sigma4-seed0" in capsys.readouterr().err


def test_cli_explains_what_a_run_folder_is(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["diagnose", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "not a bjepa run folder" in err and "checkpoints/*.pt" in err
    assert main(["diagnose", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    save_checkpoint(tmp_path / "anon" / "m.pt", VJEPA(20, 4), meta={})
    assert main(["diagnose", str(tmp_path / "anon")]) == 2
    assert "does not record its data" in capsys.readouterr().err
    assert main(["diagnose", str(empty), "--num-samples", "1"]) == 2


# -- input validation --------------------------------------------------------------------------
def test_bad_inputs_are_named():
    p = dist.Normal(torch.zeros(10, 2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="observed"):
        calibrate(p, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="levels"):
        calibrate(p, torch.zeros(10, 2), levels=[0.5, 1.2])
    with pytest.raises(ValueError, match="tolerance"):
        calibrate(p, torch.zeros(10, 2), tolerance=0.7)
    with pytest.raises(ValueError, match="event shape"):
        calibrate(dist.Normal(torch.zeros(10, 2), 1.0), torch.zeros(10, 2))
    with pytest.raises(TypeError, match="predictive"):
        calibrate("not a distribution", torch.zeros(10, 2))
    with pytest.raises(TypeError, match="world model"):
        diagnose_model(torch.nn.Linear(2, 2), torch.zeros(10, 2), torch.zeros(10, 2))
    m, c, t = exact_linear_gaussian(n=50)
    with pytest.raises(ValueError, match="num_samples"):
        to_inference_data(m, c, t, num_samples=1)
    with pytest.raises(ValueError, match="target"):
        to_inference_data(m, c, None)
    with pytest.raises(ValueError, match="threshold"):
        collapse_from_moments(c, torch.ones_like(c), c, threshold=0.9)
