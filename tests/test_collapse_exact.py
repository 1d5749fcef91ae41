"""Exact checks of the collapse diagnostics (``bjepa.diagnostics.collapse``) on hand-built
moments whose statistics are known in closed form, including the boundaries of every
threshold; written to kill mutants the behavioural tests let through (``make mutate``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from bjepa.diagnostics.collapse import (
    ACTIVE_THRESHOLD,
    collapse_from_moments,
    effective_rank,
    gaussian_kl_per_dim,
)


def _signs(n: int, d: int) -> torch.Tensor:
    """±1 columns with mean 0 and (biased) variance exactly 1."""
    return torch.tensor([[1.0 if (i >> j) & 1 else -1.0 for j in range(d)] for i in range(n)],
                        dtype=torch.float64)


def _context(n: int = 8, d: int = 3) -> torch.Tensor:
    return _signs(n, d)  # orthogonal centred columns of equal norm: effective rank d


def test_gaussian_kl_per_dim_matches_torch():
    loc = torch.tensor([0.0, 1.5, -2.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 0.3, 2.5], dtype=torch.float64)
    p_loc = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    p_scale = torch.tensor([1.0, 2.0, 0.7], dtype=torch.float64)
    want = kl_divergence(Normal(loc, scale), Normal(p_loc, p_scale))
    torch.testing.assert_close(gaussian_kl_per_dim(loc, scale, p_loc, p_scale), want,
                               rtol=1e-12, atol=1e-12)


def test_effective_rank_is_exp_entropy_of_singular_value_shares():
    z = torch.zeros(4, 2, dtype=torch.float64)
    z[:, 0] = torch.tensor([3.0, -3.0, 3.0, -3.0])
    z[:, 1] = torch.tensor([1.0, 1.0, -1.0, -1.0])
    erank, p = effective_rank(z + 5.0)  # centred first: the offset does not count
    torch.testing.assert_close(p, torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert erank == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert effective_rank(_context(8, 3))[0] == pytest.approx(3.0)
    one, p1 = effective_rank(torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]))
    assert one == pytest.approx(1.0) and p1[1] == pytest.approx(0.0, abs=1e-7)
    assert effective_rank(torch.full((5, 3), 7.0)) == (0.0, pytest.approx(torch.zeros(3)))


def test_collapse_statistics_are_the_closed_forms():
    n = 8
    loc = _signs(n, 3) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)  # var 1, 4, 0.25
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).expand(n, 3)  # noise .25, 1, 4
    p_scale = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    r = collapse_from_moments(loc, scale, _context(), prior_scale=p_scale,
                              prior_loc=torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    var = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    noise = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(r.share_explained, dtype=torch.float64),
                               var / (var + noise))
    torch.testing.assert_close(torch.tensor(r.information_nats, dtype=torch.float64),
                               0.5 * torch.log1p(var / noise))
    torch.testing.assert_close(torch.tensor(r.mean_variance_prior_units, dtype=torch.float64),
                               var / p_scale**2)
    torch.testing.assert_close(torch.tensor(r.posterior_variance_prior_units,
                                            dtype=torch.float64), noise / p_scale**2)
    p_loc = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    kl = kl_divergence(Normal(loc, scale), Normal(p_loc, p_scale)).mean(0)
    torch.testing.assert_close(torch.tensor(r.kl_per_dim, dtype=torch.float64), kl)
    assert r.active == [True, True, True] and r.informative == [True, True, False]
    assert (r.n_active, r.n_informative, r.latent_dim) == (3, 2, 3)
    assert r.verdict == "partial collapse" and not r.deterministic
    assert any("1 of 3 units carry < ½ bit (dims [2])" in s for s in r.reasons), r.reasons
    assert r.effective_rank == pytest.approx(3.0) and not r.context_constant
    assert r.to_dict()["verdict"] == "partial collapse"
    assert "2 carry ≥ ½ bit" in r.summary() and "3 of 3 units active" in r.summary()


def test_thresholds_are_strict_at_their_boundaries():
    n = 8
    # share exactly ½ (mean variance = noise): active, but not informative
    half = collapse_from_moments(_signs(n, 3), torch.ones(n, 3, dtype=torch.float64),
                                 _context())
    assert half.share_explained == [0.5, 0.5, 0.5]
    assert half.active == [True] * 3 and half.informative == [False] * 3
    assert half.verdict == "collapsed"
    assert any("no unit carries ½ bit" in s for s in half.reasons)
    # share exactly the threshold 1/100: inactive
    edge = collapse_from_moments(_signs(n, 3), torch.full((n, 3), math.sqrt(99.0),
                                                          dtype=torch.float64), _context())
    assert edge.share_explained[0] == pytest.approx(ACTIVE_THRESHOLD, abs=1e-15)
    assert edge.active == [False] * 3 and edge.verdict == "collapsed"
    assert any(s.startswith("no active units: in every dimension the input explains ≤ 1 %")
               for s in edge.reasons)
    assert not any("½ bit" in s for s in edge.reasons)  # no active unit: nothing to weigh


def test_healthy_partial_and_floor_verdicts():
    n = 8
    loc = _signs(n, 3)
    small = torch.full((n, 3), 0.1, dtype=torch.float64)
    ok = collapse_from_moments(loc, small, _context(), predictive_scale=small)
    assert ok.verdict == "healthy" and ok.floor_share == [0.0, 0.0, 0.0]
    assert ok.reasons[-1].startswith("all 3 units active and informative")
    assert ok.predictive_sd_median == [0.1] * 3 and ok.predictive_sd_min == [0.1] * 3
    # one dim inactive
    dead = loc.clone()
    dead[:, 1] = 0.0
    r = collapse_from_moments(dead, small, _context())
    assert r.verdict == "partial collapse" and r.active == [True, False, True]
    assert any("1 of 3 units inactive (dims [1])" in s for s in r.reasons), r.reasons
    # predictions at the floor: exactly twice the floor counts, for > 1 % of the rows
    pred = small.clone()
    pred[0, 2] = 2 * 1e-4
    r = collapse_from_moments(loc, small, _context(), predictive_scale=pred, scale_floor=1e-4)
    assert r.floor_share == [0.0, 0.0, 1 / n] and r.verdict == "partial collapse"
    assert any("floor (0.0001) for dims [2] (12 % of predictions)" in s for s in r.reasons), \
        r.reasons
    pred[0, 2] = 2.0001e-4
    r = collapse_from_moments(loc, small, _context(), predictive_scale=pred, scale_floor=1e-4)
    assert r.floor_share == [0.0, 0.0, 0.0] and r.verdict == "healthy"
    # a low-rank context: dimensional collapse
    flat = _context(8, 3).clone()
    flat[:, 1:] = 0.0
    r = collapse_from_moments(loc, small, flat)
    assert r.effective_rank == pytest.approx(1.0) and r.verdict == "partial collapse"
    assert any("effective rank of z_C is 1.00 of 3" in s for s in r.reasons), r.reasons
    # a constant context: collapsed
    r = collapse_from_moments(loc, small, torch.ones(8, 3))
    assert r.context_constant and r.verdict == "collapsed" and r.effective_rank == 0.0


def test_deterministic_encoders_use_the_share_of_mean_variance():
    n = 8
    loc = _signs(n, 3) * torch.tensor([1.0, 1.0, 0.1], dtype=torch.float64)  # var 1, 1, .01
    r = collapse_from_moments(loc, None, _context())
    mean_var = (1 + 1 + 0.01) / 3
    torch.testing.assert_close(torch.tensor(r.share_explained, dtype=torch.float64),
                               torch.tensor([1, 1, 0.01], dtype=torch.float64) / mean_var)
    assert r.deterministic and r.kl_per_dim is None and r.information_nats is None
    assert r.active == [True, True, True] and r.informative == r.active
    assert r.verdict == "healthy"
    zero = collapse_from_moments(torch.zeros(n, 3), None, _context())
    assert zero.share_explained == [0.0] * 3 and zero.verdict == "collapsed"
    assert any("its share of the mean variance ≤ 1 %" in s for s in zero.reasons)


def test_collapse_inputs_are_validated():
    n = 8
    loc = _signs(n, 3)
    with pytest.raises(ValueError, match="post_scale"):
        collapse_from_moments(loc, torch.ones(n, 2), _context())
    for bad in (0.0, 0.5, True, "0.1", -1.0):
        with pytest.raises(ValueError, match="threshold"):
            collapse_from_moments(loc, None, _context(), threshold=bad)
    assert collapse_from_moments(loc, None, _context(), threshold=0.49).threshold == 0.49


def test_deterministic_threshold_is_strict_and_messages_state_it():
    n = 8
    loc = _signs(n, 2) * torch.tensor([1.0, 0.5], dtype=torch.float64)  # var 1, 0.25
    r = collapse_from_moments(loc, None, _context(n, 2), threshold=0.4)
    assert r.share_explained == [1.6, 0.4]  # 0.25 / mean(1, 0.25) is exactly 0.4
    assert r.active == [True, False] and r.verdict == "partial collapse"
    assert any(s == "1 of 2 units inactive (dims [1]): the input explains ≤ 40 % of their "
               "variance" for s in r.reasons), r.reasons


def test_collapse_diagnostics_measures_kl_against_the_models_own_prior():
    from torch.distributions import Independent

    from bjepa.diagnostics.collapse import collapse_diagnostics
    from bjepa.models import VJEPA

    class WidePrior(VJEPA):
        def prior_dist(self, like):
            return Independent(Normal(torch.full_like(like, 0.5), torch.full_like(like, 2.0)),
                               1)

    torch.manual_seed(0)
    m = WidePrior(5, 2, init="random").double()
    x = torch.randn(41, 5, dtype=torch.float64)
    r = collapse_diagnostics(m, x[:-1], x[1:])
    q = m.target_dist(x[1:])
    kl = gaussian_kl_per_dim(q.mean, q.stddev, torch.tensor(0.5, dtype=torch.float64),
                             torch.tensor(2.0, dtype=torch.float64)).mean(0)
    torch.testing.assert_close(torch.tensor(r.kl_per_dim, dtype=torch.float64), kl)
    torch.testing.assert_close(torch.tensor(r.posterior_variance_prior_units,
                                            dtype=torch.float64),
                               q.variance.mean(0).detach() / 4.0)
    # the variance-floor check reads the predictive scale from the model itself
    sd = m.predict(x[:-1]).stddev
    torch.testing.assert_close(torch.tensor(r.predictive_sd_median, dtype=torch.float64),
                               sd.median(0).values)
    assert r.floor_share == [0.0, 0.0]


def test_numerically_constant_representations_count_as_constant():
    g = torch.Generator().manual_seed(0)
    n = 100
    wobble = 1e-11 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    # singular values ~1e-10 against a scale of 1: below 1e-9 · scale · √N, so rank 0
    assert effective_rank(1.0 + wobble)[0] == 0.0
    assert effective_rank(1.0 + 1e4 * wobble)[0] > 1.5  # ~1e-6: a real (if small) spread


def test_floor_share_threshold_is_strict():
    n = 100
    loc = torch.tensor([[1.0 if i % 2 else -1.0, 1.0 if (i // 2) % 2 else -1.0]
                        for i in range(n)], dtype=torch.float64)
    small = torch.full((n, 2), 0.1, dtype=torch.float64)
    pred = small.clone()
    pred[0, 1] = 1e-4  # exactly 1 % of the rows at the floor: not flagged (> 1 % is)
    r = collapse_from_moments(loc, small, loc, predictive_scale=pred, scale_floor=1e-4)
    assert r.floor_share == [0.0, 0.01] and r.verdict == "healthy", r.reasons
    pred[1, 1] = 1e-4
    r = collapse_from_moments(loc, small, loc, predictive_scale=pred, scale_floor=1e-4)
    assert r.floor_share == [0.0, 0.02] and r.verdict == "partial collapse"
