"""bjepa's models in a Pyro user's own code: a plain SVI loop with the documented hooks,
the guard when the hooks are missing, Predictive, poutine handlers, autoguides, JIT ELBOs and
render_model (docs/pyro.md)."""

from __future__ import annotations

import shutil
import warnings

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam, ClippedAdam

from bjepa.data import noisy_tv
from bjepa.experiments.noisy_tv import probe
from bjepa.inference import fit, set_seed, with_hooks
from bjepa.models import BJEPA, VJEPA


@pytest.fixture(scope="module")
def split8():
    return noisy_tv.make_split(8.0, 0)


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def test_plain_svi_with_hooks_takes_the_steps_fit_takes(split8):
    """The same seed, data and optimiser arithmetic: a plain Pyro loop wrapped with
    ``with_hooks`` ends where ``fit`` ends, to float rounding."""
    train, _ = split8
    x = train.obs[:1200]
    torch.manual_seed(0)
    a = VJEPA(20, 4)
    b = VJEPA(20, 4)
    b.load_state_dict(a.state_dict())
    fit(a, x[:-1], x[1:], steps=40, batch_size=128, lr=3e-3, seed=0, elbo="meanfield",
        progress=False)
    set_seed(0)
    svi = with_hooks(SVI(b.model, b.guide, Adam({"lr": 3e-3}), TraceMeanField_ELBO()), b,
                     steps=40)
    for _ in range(40):
        svi.step(x[:-1], x[1:], 128)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    for p, q in zip(a.target_encoder.parameters(), b.target_encoder.parameters(),
                    strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_plain_loop_without_hooks_warns_naming_them(split8):
    train, _ = split8
    x = train.obs[:600]
    m = VJEPA(20, 4)
    svi = SVI(m.model, m.guide, ClippedAdam({"lr": 3e-3}), TraceMeanField_ELBO())
    with pytest.warns(UserWarning) as record:
        for _ in range(100):
            svi.step(x[:-1], x[1:], 64)
    text = " ".join(str(w.message) for w in record)
    assert "model.prepare(context, target)" in text
    assert "model.after_step(step, total_steps)" in text
    with warnings.catch_warnings():  # once per model: no second warning
        warnings.simplefilter("error")
        for _ in range(150):
            svi.step(x[:-1], x[1:], 64)


def test_hooked_loop_does_not_warn(split8):
    x = split8[0].obs[:400]
    m = VJEPA(20, 4)
    svi = with_hooks(SVI(m.model, m.guide, ClippedAdam({"lr": 3e-3}), TraceMeanField_ELBO()),
                     m, steps=120)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(120):
            svi.step(x[:-1], x[1:], 64)


@pytest.mark.slow
def test_plain_loop_with_hooks_reaches_the_oracle_at_sigma_8(split8):
    """The loop of docs/pyro.md: 1000 steps of 256 rows, ClippedAdam 3e-3, σ = 8."""
    train, test = split8
    x = train.obs
    set_seed(0)
    m = VJEPA(x.shape[1], 4)
    svi = with_hooks(SVI(m.model, m.guide, ClippedAdam({"lr": 3e-3}), TraceMeanField_ELBO()),
                     m, steps=1000)
    for _ in range(1000):
        svi.step(x[:-1], x[1:], 256)
    assert probe(m, train, test)["signal_r2"] >= 0.99


def test_predictive_condition_block_and_scale(split8):
    x = split8[0].obs[:200]
    m = VJEPA(20, 4)
    fit(m, x[:-1], x[1:], steps=30, progress=False)
    samples = Predictive(m.model, guide=m.guide, num_samples=7)(x[:-1], x[1:])
    assert samples["z_target"].shape == (7, 199, 4)
    # condition fixes the latent: the model's trace then holds the given value
    z = torch.zeros(199, 4)
    tr = poutine.trace(poutine.condition(m.model, data={"z_target": z})).get_trace(x[:-1],
                                                                                  x[1:])
    assert torch.equal(tr.nodes["z_target"]["value"], z) and tr.nodes["z_target"]["is_observed"]
    # block hides the latent site from an outer handler
    tr = poutine.trace(poutine.block(m.model, hide=["z_target"])).get_trace(x[:-1], x[1:])
    assert "z_target" not in tr.nodes and "dynamics" in tr.nodes
    # scale multiplies every term of the ELBO
    loss = Trace_ELBO().loss
    with torch.random.fork_rng():
        torch.manual_seed(0)
        one = loss(m.model, m.guide, x[:-1], x[1:])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        three = loss(poutine.scale(m.model, scale=3.0), poutine.scale(m.guide, scale=3.0),
                     x[:-1], x[1:])
    assert three == pytest.approx(3 * one, rel=1e-5)


def test_jit_trace_elbo_runs_on_vjepa(split8):
    x = split8[0].obs[:200]
    m = VJEPA(20, 4)
    m.prepare(x[:-1], x[1:])
    elbo = JitTrace_ELBO(ignore_jit_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracer warnings, not ours
        a = elbo.loss(m.model, m.guide, x[:-1], x[1:])
    assert torch.isfinite(torch.tensor(a))


def test_autoguide_over_the_predictor_weights(split8):
    """BJEPA's weight posterior is a Pyro autoguide over the predictor's weight sites."""
    x = split8[0].obs[:300]
    m = BJEPA(20, 4, weight_prior="normal")
    assert isinstance(m.weight_guide, AutoNormal)
    fit(m, x[:-1], x[1:], steps=20, progress=False)
    tr = poutine.trace(m.guide).get_trace(x[:-1], x[1:])
    weight_sites = [n for n, s in tr.nodes.items() if s["type"] == "sample"
                    and "predictor" in n]
    assert weight_sites  # the predictor's weights are latent sample sites of the guide


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot (apt graphviz)")
def test_render_model_draws_vjepa_and_bjepa(tmp_path):
    pytest.importorskip("graphviz")
    x = torch.randn(10, 4)
    for m in (VJEPA(4, 2), BJEPA(4, 2, weight_prior="normal")):
        g = pyro.render_model(m.model, model_args=(x, x), render_distributions=True)
        assert "z_target" in g.source and "dynamics" in g.source
        g.render(tmp_path / type(m).__name__, format="png", cleanup=True)
        assert (tmp_path / f"{type(m).__name__}.png").stat().st_size > 1000
