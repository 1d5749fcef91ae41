"""Exact checks of calibration (``bjepa.diagnostics.calibration``): forecasts, PIT, CRPS,
report fields and verdicts against closed forms, numerical integrals and NumPy/SciPy; written
to kill mutants the behavioural tests let through (``make mutate``, docs/testing.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bjepa.diagnostics.calibration import calibrate


def _regression(n=300, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 3))
    y = x @ np.array([[1.0, -0.5], [0.3, 0.2], [0.0, 2.0]]) + np.array([0.7, -1.2]) \
        + g.normal(size=(n, 2)) * np.array([0.3, 0.6])
    return torch.tensor(x), torch.tensor(y)


# -- calibration: Forecast, scores, verdict ---------------------------------------------------
def _mix():
    from bjepa.diagnostics.calibration import Forecast

    loc = torch.tensor([[[0.0, 1.0], [2.0, -1.0]], [[1.0, 3.0], [-2.0, 0.5]]],
                       dtype=torch.float64)             # (K=2, N=2, D=2)
    scale = torch.tensor([[[1.0, 0.5], [2.0, 1.0]], [[0.3, 1.5], [1.0, 0.7]]],
                         dtype=torch.float64)
    w = torch.tensor([[0.25, 0.6], [0.75, 0.4]], dtype=torch.float64)  # (K, N)
    return Forecast(loc=loc, scale=scale, weights=w), loc, scale, w


def test_forecast_mixture_moments_and_cdf_are_the_closed_forms():
    fc, loc, scale, w = _mix()
    wk = w[..., None]
    mean = (wk * loc).sum(0)
    var = (wk * (scale**2 + loc**2)).sum(0) - mean**2
    torch.testing.assert_close(fc.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fc.variance, var, rtol=1e-12, atol=1e-12)
    y = torch.tensor([[0.5, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    from scipy import stats

    want = sum(w[k].numpy()[:, None] * stats.norm.cdf(y.numpy(), loc[k].numpy(),
                                                         scale[k].numpy()) for k in range(2))
    np.testing.assert_allclose(fc.cdf(y).numpy(), want, rtol=1e-10)
    assert fc.kind == "gaussian mixture" and fc.shape == (2, 2)
    # unnormalised weights are normalised per row
    from bjepa.diagnostics.calibration import Forecast

    fc2 = Forecast(loc=loc, scale=scale, weights=3.0 * w)
    torch.testing.assert_close(fc2.mean, mean, rtol=1e-12, atol=1e-12)


def _crps_by_integration(cdf, y, lo=-40.0, hi=40.0):
    from scipy import integrate

    left = integrate.quad(lambda x: cdf(x) ** 2, lo, y, limit=400)[0]
    right = integrate.quad(lambda x: (1.0 - cdf(x)) ** 2, y, hi, limit=400)[0]
    return left + right


def test_crps_of_gaussians_and_mixtures_is_the_defining_integral():
    from scipy import stats

    from bjepa.diagnostics.calibration import Forecast

    fc, loc, scale, w = _mix()
    y = torch.tensor([[0.5, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    got = fc.crps(y).numpy()
    for n in range(2):
        for d in range(2):
            def cdf(x, n=n, d=d):
                return sum(float(w[k, n]) * stats.norm.cdf(x, float(loc[k, n, d]),
                                                           float(scale[k, n, d]))
                           for k in range(2))
            assert got[n, d] == pytest.approx(_crps_by_integration(cdf, float(y[n, d])),
                                              rel=1e-6, abs=1e-9)
    single = Forecast(loc=loc[:1], scale=scale[:1])
    got1 = single.crps(y).numpy()
    for n in range(2):
        for d in range(2):
            m, s = float(loc[0, n, d]), float(scale[0, n, d])
            assert got1[n, d] == pytest.approx(
                _crps_by_integration(lambda x, m=m, s=s: stats.norm.cdf(x, m, s),
                                     float(y[n, d])), rel=1e-6, abs=1e-9)


def test_sample_forecast_cdf_is_the_mid_rank_and_crps_the_fair_estimator():
    from bjepa.diagnostics.calibration import Forecast

    x = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0], dtype=torch.float64)  # S = 5 draws, N = D = 1
    fc = Forecast.from_samples(x.reshape(5, 1, 1))
    for y, below, ties in [(2.0, 1, 2), (0.0, 0, 0), (9.0, 5, 0), (3.0, 3, 1)]:
        got = fc.cdf(torch.tensor([[y]])).item()
        assert got == pytest.approx((below + 0.5 * ties + 0.5) / 6, abs=1e-15)
    y = 2.5
    xs = x.numpy()
    pairs = np.abs(xs[:, None] - xs[None, :]).sum() / (5 * 4)
    want = np.abs(xs - y).mean() - 0.5 * pairs
    assert fc.crps(torch.tensor([[y]])).item() == pytest.approx(want, abs=1e-12)
    assert fc.kind == "samples" and not fc.has_density
    torch.testing.assert_close(fc.mean, torch.tensor([[2.6]], dtype=torch.float64))
    torch.testing.assert_close(fc.variance, torch.tensor([[float(np.var(xs, ddof=1))]],
                                                         dtype=torch.float64))


def test_many_component_crps_estimate_agrees_with_the_exact_sum():
    """Above the pair budget the spread term is estimated from draws: unbiased, close."""
    from bjepa.diagnostics import calibration as cal

    g = torch.Generator().manual_seed(0)
    k, n = 300, 30  # K²·N = 2.7e6 > the exact budget
    loc = torch.randn(k, n, 1, generator=g, dtype=torch.float64)
    scale = 0.5 + torch.rand(k, n, 1, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    assert k * k * n > cal._EXACT_PAIR_BUDGET
    est = cal.Forecast(loc=loc, scale=scale).crps(y)
    exact = cal.Forecast(loc=loc[:, :3], scale=scale[:, :3]).crps(y[:3])  # within budget
    torch.manual_seed(1)
    # the mean over rows is close (each row's spread term from 256 draws)
    assert abs(float(est[:3].mean() - exact.mean())) < 0.05


def test_calibrate_report_fields_are_the_documented_statistics():
    from scipy import stats

    g = torch.Generator().manual_seed(3)
    n = 400
    loc = torch.randn(n, 2, generator=g, dtype=torch.float64)
    sd = torch.tensor([0.5, 2.0], dtype=torch.float64).expand(n, 2)
    y = loc + sd * torch.randn(n, 2, generator=g, dtype=torch.float64) + 0.1
    d = torch.distributions.Independent(torch.distributions.Normal(loc, sd), 1)
    r = calibrate(d, y)
    z = ((y - loc) / sd).numpy()
    pit_values = stats.norm.cdf(z)
    np.testing.assert_allclose(r.pit, pit_values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.pit_mean_per_dim, pit_values.mean(0), rtol=1e-10)
    ks = stats.kstest(pit_values.ravel(), "uniform")
    assert r.ks_statistic == pytest.approx(ks.statistic) and r.ks_pvalue == pytest.approx(
        ks.pvalue)
    np.testing.assert_allclose(r.rmse_per_dim, np.sqrt(((y - loc).numpy() ** 2).mean(0)),
                               rtol=1e-10)
    np.testing.assert_allclose(r.rms_spread_per_dim, [0.5, 2.0], rtol=1e-10)
    assert r.nll == pytest.approx(float(-d.log_prob(y).mean()), rel=1e-10)
    s = sd.numpy()
    crps = s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    assert r.crps == pytest.approx(crps.mean(), rel=1e-9)
    np.testing.assert_allclose(r.crps_per_dim, crps.mean(0), rtol=1e-9)
    cov = [[float(((np.abs(pit_values[:, j] - 0.5) <= lv / 2)).mean()) for j in range(2)]
           for lv in r.levels]
    np.testing.assert_allclose(r.coverage_per_dim, cov, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.coverage, np.mean(cov, 1), rtol=0, atol=1e-12)
    assert (r.n_observations, r.dim, r.n_draws, r.forecast_kind) == (n, 2, 1, "gaussian")
    assert r.coverage_at(0.9) == r.coverage[r.levels.index(0.9)]
    with pytest.raises(ValueError, match="not checked"):
        r.coverage_at(0.7)
    hist = r.to_dict()["pit_histogram"]
    assert hist["bins"] == 20 and sum(hist["counts"]) == 2 * n
    assert f"{100 * r.coverage_at(0.9):.1f} %" in r.summary()


def test_calibrate_with_draws_of_the_observation_averages_over_them():
    g = torch.Generator().manual_seed(4)
    n = 300
    loc = torch.zeros(n, 1, dtype=torch.float64)
    d = torch.distributions.Independent(torch.distributions.Normal(loc, 1.0), 1)
    ys = torch.randn(3, n, 1, generator=g, dtype=torch.float64)
    r = calibrate(d, ys)
    per = [calibrate(d, y) for y in ys]
    assert r.n_draws == 3
    np.testing.assert_allclose(r.coverage, np.mean([p.coverage for p in per], 0), atol=1e-12)
    assert r.crps == pytest.approx(np.mean([p.crps for p in per]), rel=1e-10)
    assert r.nll == pytest.approx(np.mean([p.nll for p in per]), rel=1e-10)
    np.testing.assert_allclose(r.pit, per[0].pit)  # the PIT of the first draw only
    rmse = np.sqrt(np.mean(ys.numpy() ** 2))
    assert r.rmse_per_dim[0] == pytest.approx(rmse, rel=1e-10)


def _grid_forecast(locs, spreads):
    from torch.distributions import Independent, Normal

    u = (torch.arange(_N, dtype=torch.float64) + 0.5) / _N
    y = torch.special.ndtri(u)[:, None].expand(_N, len(spreads))
    loc = torch.tensor(locs, dtype=torch.float64).expand(_N, len(locs))
    sd = torch.tensor(spreads, dtype=torch.float64).expand(_N, len(spreads))
    return Independent(Normal(loc, sd), 1), y


_N = 20000


def test_verdict_names_bias_and_mixed_dimensions():
    d, y = _grid_forecast([0.0, 0.0], [1.0, 1.0])
    r = calibrate(d, y)
    assert r.verdict == "calibrated" and len(r.reasons) == 1, r.reasons
    assert r.reasons[0].startswith("coverage of observed values is within ±")
    d, y = _grid_forecast([0.3], [1.0])  # the median sits 0.3 σ above the observations
    r = calibrate(d, y)
    assert r.verdict == "miscalibrated" and any("below the predictive median" in s
                                                for s in r.reasons), r.reasons
    d, y = _grid_forecast([-0.3], [1.0])
    r = calibrate(d, y)
    assert r.verdict == "miscalibrated" and any("above" in s and "dims [0]" in s
                                                for s in r.reasons), r.reasons
    d, y = _grid_forecast([0.0, 0.0], [0.8, 1.3])  # too narrow in dim 0, too wide in dim 1
    r = calibrate(d, y)
    assert r.verdict == "miscalibrated"
    assert any("too narrow in latent dims [0]" in s for s in r.reasons), r.reasons
    assert any("too wide in latent dims [1]" in s for s in r.reasons), r.reasons
    d, y = _grid_forecast([0.0, 0.0], [0.8, 0.8])
    r = calibrate(d, y)
    assert r.verdict == "overconfident" and r.reasons[0].startswith("intervals are too narrow")
    assert not any("latent dims" in s for s in r.reasons), r.reasons  # pooled says it all
    assert f"90 %: {100 * r.coverage_at(0.9):.1f} %" in r.reasons[0], r.reasons
    d, y = _grid_forecast([0.0, 0.0], [1.3, 1.3])
    r = calibrate(d, y)
    assert r.verdict == "underconfident" and r.reasons[0].startswith("intervals are too wide")


def test_calibrate_refuses_bad_levels_and_tolerances():
    d, y = _grid_forecast([0.0], [1.0])
    for bad in (0.0, 0.5, True, -0.1, "0.1"):
        with pytest.raises(ValueError, match="tolerance"):
            calibrate(d, y, tolerance=bad)
    for levels in ([0.0, 0.5], [1.0], []):
        with pytest.raises(ValueError, match="levels"):
            calibrate(d, y, levels=levels)
    r = calibrate(d, y, levels=[0.9, 0.5, 0.9])
    assert r.levels == [0.5, 0.9]
    with pytest.raises(ValueError, match="observed"):
        calibrate(d, y[None, None])


def test_fit_linear_probe_is_least_squares_and_affine_pushes_forecasts_through_it():
    from bjepa.diagnostics.calibration import Forecast, fit_linear_probe

    x, y = _regression(200, seed=5)
    coef, intercept, sd = fit_linear_probe(x, y)
    design = np.c_[x.numpy(), np.ones(200)]
    sol = np.linalg.lstsq(design, y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(coef.numpy(), sol[:-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(intercept.numpy(), sol[-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sd.numpy(), (y.numpy() - design @ sol).std(0, ddof=1),
                               rtol=1e-9)
    with pytest.raises(ValueError, match="more rows"):
        fit_linear_probe(x[:4], y[:4])
    # a point forecast (identical draws) maps exactly; noise adds its variance
    z = x[:5]
    fc = Forecast.from_samples(z[None].expand(4, 5, 3).clone())
    out = fc.affine(coef, intercept)
    torch.testing.assert_close(out.mean, z @ coef + intercept, rtol=1e-12, atol=1e-12)
    noisy = fc.affine(coef, intercept, torch.tensor([0.5, 2.0], dtype=torch.float64),
                      num_samples=20000)
    np.testing.assert_allclose(noisy.variance.mean(0).numpy(), [0.25, 4.0], rtol=0.05)
    with pytest.raises(ValueError, match="coef"):
        fc.affine(coef[:2], intercept)
    with pytest.raises(TypeError):
        fc.affine(coef, intercept, None, 100)  # num_samples is keyword-only


def test_forecasts_from_every_kind_of_predictive():
    from torch.distributions import (
        Categorical,
        Independent,
        MixtureSameFamily,
        MultivariateNormal,
        Normal,
        StudentT,
    )

    from bjepa.diagnostics.calibration import Forecast, as_forecast

    g = torch.Generator().manual_seed(7)
    loc = torch.randn(4, 2, generator=g, dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    y = torch.randn(4, 2, generator=g, dtype=torch.float64)
    # a full-covariance Gaussian: its marginals, and the joint density for the NLL
    mvn = MultivariateNormal(loc, covariance_matrix=cov)
    fc = as_forecast(mvn)
    assert fc.kind == "gaussian" and fc.has_density
    torch.testing.assert_close(fc.mean, loc)
    torch.testing.assert_close(fc.variance, torch.diagonal(cov).expand(4, 2))
    torch.testing.assert_close(fc.log_prob(y), mvn.log_prob(y))
    # a mixture of diagonal Gaussians with per-row weights
    probs = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1], [0.3, 0.7]], dtype=torch.float64)
    comp_loc = torch.randn(4, 2, 2, generator=g, dtype=torch.float64)
    comp_sd = 0.5 + torch.rand(4, 2, 2, generator=g, dtype=torch.float64)
    mix = MixtureSameFamily(Categorical(probs=probs),
                            Independent(Normal(comp_loc, comp_sd), 1))
    fc = as_forecast(mix)
    assert fc.kind == "gaussian mixture"
    torch.testing.assert_close(fc.weights, probs.T)
    torch.testing.assert_close(fc.mean, mix.mean)
    torch.testing.assert_close(fc.variance, mix.variance)
    torch.testing.assert_close(fc.log_prob(y), mix.log_prob(y))
    # an equal-weight list of Gaussians is the same as that mixture
    parts = [Independent(Normal(comp_loc[:, k], comp_sd[:, k]), 1) for k in range(2)]
    fl = as_forecast(parts)
    even = MixtureSameFamily(Categorical(probs=torch.full((4, 2), 0.5, dtype=torch.float64)),
                             Independent(Normal(comp_loc, comp_sd), 1))
    torch.testing.assert_close(fl.mean, even.mean)
    torch.testing.assert_close(fl.cdf(y), as_forecast(even).cdf(y))
    torch.testing.assert_close(fl.log_prob(y), even.log_prob(y))
    assert fl.sample(7).shape == (7, 4, 2)
    # anything else is reduced to draws; a tensor of draws has no density
    t = Independent(StudentT(5.0, loc, torch.ones_like(loc)), 1)
    torch.manual_seed(0)
    fs = as_forecast(t, num_samples=4000)
    assert fs.kind == "samples" and fs.has_density and fs.samples.shape == (4000, 4, 2)
    torch.testing.assert_close(fs.mean, loc, atol=0.1, rtol=0)
    torch.testing.assert_close(fs.log_prob(y), t.log_prob(y))
    ft = as_forecast(torch.randn(50, 4, 2, dtype=torch.float64))
    assert ft.kind == "samples" and not ft.has_density and ft.log_prob(y) is None
    assert ft.sample(50).shape == (50, 4, 2)
    assert as_forecast(fc) is fc
    mixed = as_forecast([parts[0], t], num_samples=300)  # not all Gaussian: draws of both
    assert mixed.kind == "samples" and mixed.samples.shape == (300, 4, 2)
    # a mixture of Gaussians too large for the exact pair sum draws from its marginals
    big = Forecast(loc=comp_loc.transpose(0, 1), scale=comp_sd.transpose(0, 1))
    assert big.sample(9).shape == (9, 4, 2)


def test_forecast_arguments_are_checked():
    from torch.distributions import Normal

    from bjepa.diagnostics.calibration import Forecast, as_forecast

    loc = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="either loc/scale"):
        Forecast()
    with pytest.raises(ValueError, match="either loc/scale"):
        Forecast(loc=loc, scale=torch.ones_like(loc), samples=torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match=r"\(K, N, D\)"):
        Forecast(loc=loc, scale=torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match=r"\(K, N, D\)"):
        Forecast(loc=loc[0], scale=torch.ones(3, 2))
    with pytest.raises(ValueError, match="positive"):
        Forecast(loc=loc, scale=torch.zeros_like(loc))
    with pytest.raises(ValueError, match="weights"):
        Forecast(loc=loc, scale=torch.ones_like(loc), weights=torch.ones(2, 3))
    with pytest.raises(ValueError, match="S >= 2"):
        Forecast(samples=torch.zeros(1, 3, 2))
    assert Forecast(samples=torch.zeros(2, 3, 2)).shape == (3, 2)  # two draws are enough
    with pytest.raises(ValueError, match="batch shape"):
        as_forecast(Normal(torch.zeros(3, 2), 1.0))  # per-dimension: needs .to_event(1)
    with pytest.raises(TypeError, match="predictive"):
        as_forecast("gaussian")
    with pytest.raises(TypeError, match="predictive"):
        as_forecast([])
    fc = Forecast(loc=loc, scale=torch.ones_like(loc))
    with pytest.raises(ValueError, match="observed must have shape"):
        fc.cdf(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least one"):
        Forecast.mixture([])
    from torch.distributions import Independent

    with pytest.raises(ValueError, match="same shape"):
        Forecast.mixture([Independent(Normal(torch.zeros(3, 2), 1.0), 1),
                          Independent(Normal(torch.zeros(4, 2), 1.0), 1)])


def test_the_exact_pair_sum_is_used_up_to_its_budget():
    """At exactly the budget K²·N·D the spread term is the exact sum (deterministic); one
    more row and it is estimated from random draws."""
    from bjepa.diagnostics import calibration as cal

    g = torch.Generator().manual_seed(0)
    k = 100
    n = cal._EXACT_PAIR_BUDGET // (k * k)
    loc = torch.randn(k, n, 1, generator=g, dtype=torch.float64)
    scale = 0.5 + torch.rand(k, n, 1, generator=g, dtype=torch.float64)
    y = torch.zeros(n, 1, dtype=torch.float64)
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        runs.append(cal.Forecast(loc=loc, scale=scale).crps(y))
    assert torch.equal(runs[0], runs[1])
    loc2 = torch.cat([loc, loc[:, :1]], 1)
    scale2 = torch.cat([scale, scale[:, :1]], 1)
    est = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        est.append(cal.Forecast(loc=loc2, scale=scale2).crps(torch.zeros(n + 1, 1)))
    assert not torch.equal(est[0], est[1])
