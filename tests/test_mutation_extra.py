"""Exact checks of the core numerical modules, written against independent oracles (NumPy,
closed forms) to kill mutants that the behavioural tests let through (``make mutate``,
docs/testing.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bjepa.metrics import canonical_directions, linear_probe_r2, predictive_information, r2_score
from bjepa.models.heads import (
    MIN_SCALE,
    DiagonalGaussianHead,
    FullCovGaussianHead,
    inverse_positive_scale,
    positive_scale,
)


def _regression(n=300, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 3))
    y = x @ np.array([[1.0, -0.5], [0.3, 0.2], [0.0, 2.0]]) + np.array([0.7, -1.2]) \
        + g.normal(size=(n, 2)) * np.array([0.3, 0.6])
    return torch.tensor(x), torch.tensor(y)


# -- heads ------------------------------------------------------------------------------------
def test_positive_scale_is_softplus_plus_floor_and_inverts():
    raw = torch.tensor([-30.0, -1.0, 0.0, 0.5, 3.0, 40.0], dtype=torch.float64)
    torch.testing.assert_close(positive_scale(raw), torch.log1p(torch.exp(raw)) + MIN_SCALE,
                               rtol=1e-12, atol=1e-12)
    scale = torch.tensor([1e-3, 0.1, 1.0, 7.5], dtype=torch.float64)
    torch.testing.assert_close(positive_scale(inverse_positive_scale(scale)), scale,
                               rtol=1e-10, atol=0)
    # below the floor it clamps to the smallest representable raw value instead of NaN
    assert torch.isfinite(inverse_positive_scale(torch.tensor([MIN_SCALE / 2]))).all()


def test_diagonal_head_start_is_least_squares_with_residual_scale():
    x, y = _regression()
    head = DiagonalGaussianHead(3, 2).double()
    with torch.no_grad():
        for name, value in head.init_values(x, y).items():
            head.get_parameter(name).copy_(value)
    design = np.c_[x.numpy(), np.ones(len(x))]
    coef = np.linalg.lstsq(design, y.numpy(), rcond=None)[0]
    resid = y.numpy() - design @ coef
    d = head(x)
    np.testing.assert_allclose(d.mean.detach().numpy(), design @ coef, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d.stddev.detach().numpy(),
                               np.broadcast_to(resid.std(0, ddof=1), (len(x), 2)), rtol=1e-7)
    assert DiagonalGaussianHead(3, 2, net="mlp").init_values(x.float(), y.float()) is None


def test_full_covariance_head_start_is_least_squares_with_residual_covariance():
    x, y = _regression(seed=1)
    head = FullCovGaussianHead(3, 2).double()
    with torch.no_grad():
        for name, value in head.init_values(x, y).items():
            head.get_parameter(name).copy_(value)
    design = np.c_[x.numpy(), np.ones(len(x))]
    coef = np.linalg.lstsq(design, y.numpy(), rcond=None)[0]
    resid = y.numpy() - design @ coef
    d = head(x)
    np.testing.assert_allclose(d.mean.detach().numpy(), design @ coef, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d.covariance_matrix[0].detach().numpy(), np.cov(resid.T),
                               rtol=1e-6, atol=1e-9)
    assert FullCovGaussianHead(3, 2, net="mlp").init_values(x.float(), y.float()) is None


def test_full_covariance_head_builds_its_cholesky_factor_from_the_network_output():
    head = FullCovGaussianHead(2, 3).double()
    out = torch.arange(1.0, 10.0, dtype=torch.float64)  # 3 means + 6 tril entries
    with torch.no_grad():
        head.net.weight.zero_()
        head.net.bias.copy_(out)
    d = head(torch.zeros(1, 2, dtype=torch.float64))
    rows, cols = torch.tril_indices(3, 3)
    L = torch.zeros(3, 3, dtype=torch.float64)
    L[rows, cols] = out[3:]
    L = torch.tril(L, -1) + torch.diag(positive_scale(torch.diagonal(L)))
    torch.testing.assert_close(d.mean[0], out[:3], rtol=0, atol=0)
    torch.testing.assert_close(d.scale_tril[0], L, rtol=1e-12, atol=0)


def test_diagonal_head_reads_mean_then_raw_scale_from_one_network():
    head = DiagonalGaussianHead(2, 2).double()
    with torch.no_grad():
        head.net.weight.zero_()
        head.net.bias.copy_(torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=torch.float64))
    d = head(torch.zeros(4, 2, dtype=torch.float64))
    assert d.batch_shape == (4,) and d.event_shape == (2,)
    torch.testing.assert_close(d.mean[0], torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(d.stddev[0], positive_scale(torch.tensor([0.0, 3.0],
                                                                        dtype=torch.float64)))


# -- metrics ----------------------------------------------------------------------------------
def test_r2_score_exact_values_and_constant_columns():
    y = torch.tensor([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0], [4.0, 2.0]])
    pred = torch.tensor([[1.5, 2.0], [2.0, 2.0], [2.5, 2.0], [4.0, 2.0]])
    r2 = r2_score(y, pred)
    # column 0: SSE = 0.5, SST = 5 → 0.9; column 1 is constant → NaN
    assert r2[0].item() == pytest.approx(0.9, abs=1e-12) and math.isnan(r2[1].item())
    assert r2_score(y[:, :1], y[:, :1]).item() == 1.0
    assert r2_score(y[:, :1], torch.full((4, 1), 2.5)).item() == pytest.approx(0.0, abs=1e-12)
    assert r2_score(y[:, :1], torch.full((4, 1), 0.0)).item() == pytest.approx(1 - 30 / 5)


def test_linear_probe_r2_matches_numpy_least_squares():
    x, y = _regression(400, seed=2)
    ztr, ytr, zte, yte = x[:300], y[:300], x[300:], y[300:]
    design = np.c_[ztr.numpy(), np.ones(300)]
    coef = np.linalg.lstsq(design, ytr.numpy(), rcond=None)[0]
    pred = np.c_[zte.numpy(), np.ones(100)] @ coef
    per = 1 - ((yte.numpy() - pred) ** 2).sum(0) / ((yte.numpy() - yte.numpy().mean(0)) ** 2
                                                     ).sum(0)
    assert linear_probe_r2(ztr, ytr, zte, yte) == pytest.approx(per.mean(), rel=1e-7)
    np.testing.assert_allclose(linear_probe_r2(ztr, ytr, zte, yte, per_dim=True).numpy(), per,
                               rtol=1e-6)
    const = torch.cat([yte[:, :1], torch.ones(100, 1, dtype=yte.dtype)], 1)
    got = linear_probe_r2(ztr, ytr, zte, const, per_dim=True)
    assert math.isnan(got[1].item()) and got[0].item() == pytest.approx(per[0], rel=1e-6)
    assert linear_probe_r2(ztr, ytr, zte, const) == pytest.approx(per[0], rel=1e-6)
    assert math.isnan(linear_probe_r2(ztr, ytr, zte, torch.ones(100, 2, dtype=yte.dtype)))
    # the smallest sample the probe accepts: one more row than columns
    assert math.isfinite(linear_probe_r2(ztr[:4], ytr[:4], zte, yte))


def _correlated(n, rhos, seed=0):
    g = np.random.default_rng(seed)
    a = g.normal(size=(n, len(rhos)))
    noise = g.normal(size=(n, len(rhos)))
    b = a * np.array(rhos) + noise * np.sqrt(1 - np.array(rhos) ** 2)
    return torch.tensor(a), torch.tensor(b)


def test_canonical_directions_whiten_and_recover_the_correlations():
    a, b = _correlated(20000, [0.9, 0.5, 0.0], seed=3)
    mix = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.5], [1.0, 0.0, 3.0]], dtype=torch.float64)
    a2 = a @ mix + 5.0
    W, rho = canonical_directions(a2, b, 2)
    np.testing.assert_allclose(rho.numpy(), [0.9, 0.5], atol=0.02)
    proj = (a2 - a2.mean(0)) @ W.double().T
    np.testing.assert_allclose(np.cov(proj.numpy().T, bias=True), np.eye(2), atol=1e-4)
    # the leading direction is the one correlated 0.9 with b
    corr = np.corrcoef(proj[:, 0].numpy(), a[:, 0].numpy())[0, 1]
    assert abs(corr) > 0.99


def test_predictive_information_is_the_gaussian_mutual_information():
    rhos = [0.8, 0.6]
    a, b = _correlated(50000, rhos, seed=4)
    exact = -0.5 * sum(math.log(1 - r * r) for r in rhos)
    assert predictive_information(a, b) == pytest.approx(exact, rel=0.02)
    one = predictive_information(a[:, :1], b[:, :1])
    assert one == pytest.approx(-0.5 * math.log(1 - 0.64), rel=0.02)
    # a copy is capped, not infinite; rows = columns of a and b together + 1 is accepted
    assert math.isfinite(predictive_information(a, a)) and predictive_information(a, a) > 5
    assert math.isfinite(predictive_information(a[:5], b[:5]))
    with pytest.raises(ValueError, match="more rows"):
        predictive_information(a[:4], b[:4])


# -- EMA and τ schedules ----------------------------------------------------------------------
def test_cosine_tau_values_between_the_ends():
    from bjepa.models.ema import cosine_tau

    s = cosine_tau(0.9, 1.0)
    # frac = step / (total − 1); τ = end − (end − start)(1 + cos πfrac)/2
    assert s(0, 11) == pytest.approx(0.9, abs=1e-15)
    assert s(5, 11) == pytest.approx(0.95, abs=1e-15)
    assert s(10, 11) == pytest.approx(1.0, abs=1e-15)
    assert s(2, 11) == pytest.approx(1.0 - 0.1 * 0.5 * (1 + math.cos(math.pi * 0.2)), abs=1e-15)
    assert s(20, 11) == pytest.approx(1.0) and s(-3, 11) == pytest.approx(0.9)  # clamped
    assert cosine_tau(0.5, 0.7)(0, 1) == pytest.approx(0.5)  # a one-step run: τ(0) = start


def test_tau_schedules_are_immutable_values():
    import dataclasses

    from bjepa.models.ema import constant_tau, cosine_tau

    for s in (constant_tau(0.5), cosine_tau()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.start = 0.0  # type: ignore[misc]
        assert hash(s) == hash(type(s)(*dataclasses.astuple(s)))


@pytest.mark.parametrize("spec", ["cosine:0.9", "linear", "linear:0.9:1", "cosine:0.9:1:2"])
def test_unknown_tau_strings_are_refused(spec):
    from bjepa.models.ema import make_tau_schedule

    with pytest.raises(ValueError, match="not understood"):
        make_tau_schedule(spec)


def test_ema_update_copies_buffers_and_requires_matching_ones():
    from bjepa.models.ema import EMATarget

    src = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMATarget(src)
    src.train()
    src(torch.randn(16, 3) * 5.0 + 2.0)  # moves the running statistics
    ema.update(src, 0.9)
    for bt, bs in zip(ema.module.buffers(), src.buffers(), strict=True):
        assert torch.equal(bt, bs)
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2, affine=True),
                                torch.nn.BatchNorm1d(2, affine=False))
    with pytest.raises(ValueError):
        EMATarget(src).update(other, 0.5)


def test_head_interfaces_keyword_options_and_state_keys():
    for cls in (DiagonalGaussianHead, FullCovGaussianHead):
        with pytest.raises(TypeError):
            cls(3, 2, "mlp")  # net and hidden_dim are keyword-only
    # the Cholesky index buffers are derived, not saved: checkpoints hold the network only
    assert set(FullCovGaussianHead(3, 2).state_dict()) == {"net.weight", "net.bias"}


def test_full_covariance_head_start_survives_collinear_residuals():
    """Two target dims with identical residuals make the residual covariance singular; the
    start adds a small jitter (+1e-8 I) so its Cholesky factor exists."""
    x, y = _regression(seed=2)
    y = torch.cat([y, y[:, :1]], dim=1)  # dim 2 repeats dim 0
    head = FullCovGaussianHead(3, 3).double()
    values = head.init_values(x, y)
    assert all(torch.isfinite(v).all() for v in values.values())


def test_heads_accept_extra_batch_dimensions():
    from bjepa.models.heads import make_head

    with pytest.raises(TypeError):
        make_head("diag", 3, 2, "mlp")  # net is keyword-only
    z = torch.randn(2, 4, 3, dtype=torch.float64)  # (replicas, rows, features)
    for name in ("diag", "full"):
        head = make_head(name, 3, 2).double()
        d = head(z)
        assert d.batch_shape == (2, 4) and d.event_shape == (2,)
        flat = head(z.reshape(8, 3))
        torch.testing.assert_close(d.mean.reshape(8, 2), flat.mean)
        torch.testing.assert_close(d.variance.reshape(8, 2), flat.variance)


def test_linear_probe_is_ols_with_the_documented_tiny_ridge():
    """``(XᵀX + 1e-9 · tr(XᵀX)/p · I)⁻¹ Xᵀy`` with X = [z, 1]: reproduced to 1e-13."""
    x, y = _regression(400, seed=2)
    ztr, ytr, zte, yte = x[:300].numpy(), y[:300].numpy(), x[300:].numpy(), y[300:].numpy()
    design = np.c_[ztr, np.ones(300)]
    gram = design.T @ design
    gram = gram + 1e-9 * np.trace(gram) / gram.shape[0] * np.eye(gram.shape[0])
    coef = np.linalg.solve(gram, design.T @ ytr)
    pred = np.c_[zte, np.ones(100)] @ coef
    want = np.mean(1 - ((yte - pred) ** 2).sum(0) / ((yte - yte.mean(0)) ** 2).sum(0))
    got = linear_probe_r2(*(torch.tensor(a) for a in (ztr, ytr, zte, yte)))
    assert got == pytest.approx(want, rel=1e-13, abs=1e-14)


def test_logistic_probe_is_invariant_to_affine_feature_scales_and_checks_labels():
    from bjepa.metrics import logistic_probe, logistic_probe_accuracy

    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 2, generator=g, dtype=torch.float64)
    y = (z @ torch.tensor([1.0, -2.0], dtype=torch.float64)
         + 0.5 * torch.randn(200, generator=g, dtype=torch.float64) > 0).long()
    scale, shift = torch.tensor([10.0, 0.1], dtype=torch.float64), 5.0
    a = logistic_probe(z, y)
    b = logistic_probe(z * scale + shift, y)  # features are standardised first
    zt = torch.randn(50, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(a.logits(zt), b.logits(zt * scale + shift), rtol=1e-4, atol=1e-4)
    assert a.accuracy(z, y) > 0.85 and a.predict(zt).dtype == torch.long
    assert logistic_probe_accuracy(z[:150], y[:150], z[150:], y[150:]) > 0.8
    with pytest.raises(TypeError):
        logistic_probe_accuracy(z[:150], y[:150], z[150:], y[150:], 1e-3)  # l2 keyword-only
    for bad in (y.double(), y.bool(), y[:, None], y[:10]):
        with pytest.raises(ValueError, match="y_train"):
            logistic_probe(z, bad)
    with pytest.raises(ValueError, match=">= 0"):
        logistic_probe(z, y - 1)
    with pytest.raises(ValueError, match="l2"):
        logistic_probe(z, y, l2=-1.0)


def test_r2_treats_numerically_constant_columns_as_constant():
    g = torch.Generator().manual_seed(0)
    y = 1.0 + 1e-7 * torch.randn(100, 1, generator=g, dtype=torch.float64)  # SST ~ 1e-12
    assert math.isnan(r2_score(y, torch.ones_like(y)).item())
    y2 = 1.0 + 1e-3 * torch.randn(100, 1, generator=g, dtype=torch.float64)
    assert math.isfinite(r2_score(y2, torch.ones_like(y2)).item())
    a, b = _correlated(50, [0.5])
    with pytest.raises(TypeError):
        predictive_information(a, b, 1e-6)  # ridge is keyword-only


def test_logistic_probe_fits_its_intercept():
    from bjepa.metrics import logistic_probe

    g = torch.Generator().manual_seed(1)
    z = torch.randn(300, 2, generator=g, dtype=torch.float64)
    y = (torch.rand(300, generator=g) < 0.9).long()  # 90 % class 1, unrelated to z
    probe = logistic_probe(z, y)
    assert float(probe.bias[1] - probe.bias[0]) > 1.5  # log-odds of 9 : 1 ≈ 2.2
    assert probe.accuracy(z, y) > 0.85
