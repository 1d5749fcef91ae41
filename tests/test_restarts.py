"""Restarts selected by a label-free score: the predictive-information metric (closed form,
invariances), the models' selection scores, and ``fit_restarts``' seeding and choice."""

from __future__ import annotations

import math

import pytest
import torch

from bjepa.data import noisy_tv
from bjepa.inference import fit, fit_restarts, restart_seed
from bjepa.inference.fit import set_seed
from bjepa.metrics import predictive_information
from bjepa.models import JEPA, VAE, VJEPA


def _gaussian_pair(n: int, rho: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = torch.tensor(rho, dtype=torch.float64)
    a = torch.randn(n, len(rho), generator=g, dtype=torch.float64)
    b = r * a + (1 - r**2).sqrt() * torch.randn(n, len(rho), generator=g, dtype=torch.float64)
    return a, b


def test_predictive_information_matches_the_gaussian_closed_form():
    rho = [0.9, 0.5, 0.0]
    a, b = _gaussian_pair(200_000, rho)
    exact = -0.5 * sum(math.log(1 - r * r) for r in rho)
    assert predictive_information(a, b) == pytest.approx(exact, abs=0.01)


def test_predictive_information_is_affine_invariant_and_zero_for_constants():
    a, b = _gaussian_pair(5000, [0.8, 0.3], seed=1)
    mix = torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)
    base = predictive_information(a, b)
    assert predictive_information(1e-4 * a @ mix + 7.0, 1e3 * b) == pytest.approx(base, rel=1e-6)
    assert predictive_information(torch.zeros(5000, 2), b) == 0.0
    independent, _ = _gaussian_pair(5000, [0.0, 0.0], seed=2)
    assert predictive_information(independent, b) < 0.01 < base


def test_predictive_information_validates_its_inputs():
    a, b = _gaussian_pair(10, [0.5, 0.5])
    with pytest.raises(ValueError, match="same rows"):
        predictive_information(a, b[:9])
    with pytest.raises(ValueError, match="more rows"):
        predictive_information(a[:4], b[:4])
    with pytest.raises(ValueError, match=r"^a must have 2 dimensions, got shape \(10,\)"):
        predictive_information(a[:, 0], b)
    with pytest.raises(ValueError, match=r"^b must have 2 dimensions"):
        predictive_information(a, b[:, 0])


@pytest.fixture(scope="module")
def tv_data():
    train, _ = noisy_tv.make_split(sigma=8.0, seed=0, train_steps=800, test_steps=100)
    return train.obs[:-1], train.obs[1:]


def test_vjepa_selection_score_is_scale_invariant(tv_data):
    """Shrinking the latent scale (what a collapsing VJEPA does, lowering its loss) leaves the
    selection score unchanged, so restarts of different scale compare."""
    ctx, tgt = tv_data
    set_seed(0)
    m = VJEPA(ctx.shape[1], 4)
    fit(m, ctx, tgt, steps=300, lr=3e-3, progress=False)
    score = m.selection_score(ctx, tgt)
    assert score > 1.0
    with torch.no_grad():
        for p in m.context_encoder.parameters():
            p.mul_(1e-3)
        m._ema.update(m.context_encoder, 0.0)
    assert m.selection_score(ctx, tgt) == pytest.approx(score, rel=1e-2)  # float32 rounding


def test_every_model_has_a_finite_selection_score(tv_data):
    ctx, tgt = tv_data
    for model in [VJEPA(ctx.shape[1], 4), JEPA(ctx.shape[1], 4), VAE(ctx.shape[1], 4)]:
        value = model.selection_score(ctx, tgt)
        assert math.isfinite(value), type(model).__name__
    with pytest.raises(ValueError, match="target"):
        VJEPA(ctx.shape[1], 4).selection_score(ctx, None)


def test_restart_seed():
    assert restart_seed(5, 0) == 5
    seeds = {restart_seed(5, r) for r in range(1, 6)}
    assert len(seeds) == 5 and 5 not in seeds and all(0 <= s < 2**31 for s in seeds)
    assert restart_seed(5, 3) == restart_seed(5, 3) != restart_seed(6, 3)
    with pytest.raises(ValueError, match="restart"):
        restart_seed(5, -1)


def test_one_restart_is_a_plain_run(tv_data):
    ctx, tgt = tv_data
    set_seed(3)
    plain = VJEPA(ctx.shape[1], 4, init="random")
    fit(plain, ctx, tgt, steps=20, batch_size=64, seed=3, progress=False)
    best = fit_restarts(lambda: VJEPA(ctx.shape[1], 4, init="random"), ctx, tgt, restarts=1,
                        seed=3, steps=20, batch_size=64, progress=False)
    assert best.index == 0 and len(best.runs) == 1 and best.runs[0]["seed"] == 3
    for p, q in zip(plain.parameters(), best.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_fit_restarts_keeps_the_best_score_and_reproduces_it(tv_data):
    ctx, tgt = tv_data
    wanted = [0.3, float("nan"), 2.0, 1.0]
    calls: list[int] = []

    def score(model, c, t):  # a stand-in score with known values per restart
        calls.append(len(calls))
        return wanted[len(calls) - 1]

    def build():
        return VJEPA(ctx.shape[1], 4, init="random")

    best = fit_restarts(build, ctx, tgt, restarts=4, seed=1, score=score, steps=5,
                        progress=False)
    assert best.index == 2 and best.score == 2.0
    assert [r["restart"] for r in best.runs] == [0, 1, 2, 3]
    assert best.runs[1]["score"] == -math.inf  # a NaN score never wins
    # restart 2 alone, from its seed, gives the same model
    s = best.runs[2]["seed"]
    set_seed(s)
    again = build()
    fit(again, ctx, tgt, steps=5, seed=s, progress=False)
    for p, q in zip(again.parameters(), best.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_fit_restarts_default_score_and_validation(tv_data, tmp_path):
    ctx, tgt = tv_data
    seen = []
    best = fit_restarts(lambda: VJEPA(ctx.shape[1], 4), ctx, tgt, restarts=2, steps=5,
                        progress=False, score_rows=300, on_restart=seen.append,
                        checkpoint_dir=tmp_path, checkpoint_every=5)
    assert [r["restart"] for r in seen] == [0, 1]
    assert best.score == max(r["score"] for r in best.runs)
    assert (tmp_path / "restart0").is_dir() and (tmp_path / "restart1").is_dir()
    with pytest.raises(ValueError, match="restarts"):
        fit_restarts(lambda: VJEPA(ctx.shape[1], 4), ctx, tgt, restarts=0)
    with pytest.raises(TypeError, match="replicas"):
        fit_restarts(lambda: VJEPA(ctx.shape[1], 4), ctx, tgt, replicas=2)
    with pytest.raises(TypeError, match="build"):
        fit_restarts(VJEPA(ctx.shape[1], 4), ctx, tgt)


def test_a_single_run_needs_no_score_but_a_choice_does(tv_data):
    ctx, tgt = tv_data[0][:8], tv_data[1][:8]  # too few rows for the predictive information
    one = fit_restarts(lambda: VJEPA(ctx.shape[1], 4), ctx, tgt, restarts=1, steps=2,
                       progress=False)
    assert one.index == 0 and one.score == -math.inf
    with pytest.raises(ValueError, match="cannot score restart 0"):
        fit_restarts(lambda: VJEPA(ctx.shape[1], 4), ctx, tgt, restarts=2, steps=2,
                     progress=False)
