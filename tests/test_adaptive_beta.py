"""Adaptive β controllers (bjepa.inference.adaptive_beta): direction, bounds, records,
resume, and the refusals (DDP, a compiled ELBO, bad arguments)."""

from __future__ import annotations

import math

import pytest
import torch

from bjepa.inference import CalibratedBeta, TargetRate, fit
from bjepa.inference.distributed import DDPStrategy
from bjepa.inference.engine import Batches, FitSettings, Trainer
from bjepa.models import VJEPA

FAST = dict(every=4, warmup=8)


def _train(split, ctl, *, beta=0.1, steps=40, **kw):
    torch.manual_seed(0)
    m = VJEPA(split[0].obs.shape[1], 4, beta=beta)
    hist = fit(m, split[0].obs[:-1], split[0].obs[1:], steps=steps, lr=3e-3, batch_size=128,
               seed=0, log_every=5, callbacks=[ctl], **kw)
    return m, hist


def test_target_rate_moves_beta_towards_the_target(small_split):
    # a rate far above what the posterior carries -> β falls; far below -> β rises
    m_lo, _ = _train(small_split, TargetRate(nats_per_dim=50.0, **FAST))
    m_hi, _ = _train(small_split, TargetRate(nats_per_dim=0.01, **FAST))
    assert m_lo.beta < 0.1 / 5
    assert m_hi.beta > 0.1 * 5


def test_rate_signal_is_the_kl_per_dimension(small_split):
    ctl = TargetRate(nats_per_dim=2.0, **FAST)
    m, hist = _train(small_split, ctl, steps=30)
    last = [r for r in hist.records if "kl_z_target" in r][-1]
    # the record's β-scaled KL part, unscaled and divided by the latent size, is a rate of
    # the same order as the controller's smoothed one
    rate = last["kl_z_target"] / (last["beta"] * 4)
    assert 0.2 < rate / last["rate"] < 5


def test_calibrated_beta_direction(small_split):
    # an unreachable coverage forces β down; a trivial one lets it rise
    m_lo, _ = _train(small_split, CalibratedBeta(coverage=0.999, rows=256, **FAST))
    m_hi, _ = _train(small_split, CalibratedBeta(coverage=0.05, rows=256, **FAST))
    assert m_lo.beta < 0.1 / 5
    assert m_hi.beta > 0.1 * 5


def test_bounds_are_respected(small_split):
    ctl = TargetRate(nats_per_dim=0.01, beta_max=0.3, **FAST)
    m, hist = _train(small_split, ctl)
    assert m.beta == pytest.approx(0.3)
    assert max(r["beta"] for r in hist.records) <= 0.3 + 1e-12
    ctl = TargetRate(nats_per_dim=50.0, beta_min=0.05, **FAST)
    m, hist = _train(small_split, ctl)
    assert m.beta == pytest.approx(0.05)
    assert min(b for _, b in ctl.trace) >= 0.05 - 1e-12
    # a start outside the bounds is clamped into them
    m, hist = _train(small_split, TargetRate(beta_min=0.5, beta_max=2.0, warmup=1000),
                     beta=10.0, steps=5)
    assert m.beta == 2.0 and hist.records[0]["beta"] == 2.0


def test_clipped_steps_and_trace_in_records(small_split):
    ctl = TargetRate(nats_per_dim=50.0, max_log_step=math.log(1.2), **FAST)
    m, hist = _train(small_split, ctl)
    betas = [b for _, b in ctl.trace]
    ratios = [b1 / b0 for b0, b1 in zip(betas, betas[1:], strict=False)]
    assert all(1 / 1.2 - 1e-9 <= r <= 1.2 + 1e-9 for r in ratios)
    assert len(betas) == 1 + (40 - 8) // 4
    # β before the warm-up ends is β₀; every record carries β
    assert all("beta" in r for r in hist.records)
    assert [r["beta"] for r in hist.records if r["step"] < 7] == [0.1] * 2
    assert hist.records[-1]["beta"] == pytest.approx(m.beta)


def test_state_survives_resume(small_split, tmp_path):
    full, _ = _train(small_split, TargetRate(nats_per_dim=1.0, **FAST), steps=40)
    _train(small_split, TargetRate(nats_per_dim=1.0, **FAST), steps=20,
           checkpoint_dir=tmp_path / "ck", checkpoint_every=20)
    resumed, hist = _train(small_split, TargetRate(nats_per_dim=1.0, **FAST), steps=40,
                           checkpoint_dir=tmp_path / "ck", resume=True)
    assert hist.resumed_from == 20
    assert resumed.beta == pytest.approx(full.beta, rel=1e-6)


def test_refuses_compiled_elbo(small_split):
    with pytest.raises(ValueError, match="compiled ELBO"):
        _train(small_split, TargetRate(), elbo="jit-meanfield", steps=2)
    # "auto" stays eager
    _, hist = _train(small_split, TargetRate(), steps=2)
    assert hist.elbo == "meanfield"


def test_refuses_ddp(small_split):
    m = VJEPA(small_split[0].obs.shape[1], 4)
    x = small_split[0].obs
    batches = Batches(m, x[:-1], x[1:], 64, torch.device("cpu"), torch.float32, {})
    trainer = Trainer(m, batches, FitSettings(steps=2), strategy=DDPStrategy(),
                      loss_fn=None, callbacks=[])
    for ctl in (TargetRate(), CalibratedBeta()):
        with pytest.raises(ValueError, match="ddp"):
            ctl.on_fit_start(trainer)


def test_refuses_models_without_beta(small_split):
    from bjepa.models import JEPA

    m = JEPA(small_split[0].obs.shape[1], 4)
    x = small_split[0].obs
    with pytest.raises(ValueError, match="model.beta"):
        fit(m, x[:-1], x[1:], steps=2, batch_size=64, callbacks=[TargetRate()])


@pytest.mark.parametrize("kwargs, match", [
    (dict(every=0), "every"), (dict(warmup=-1), "warmup"), (dict(gain=0.0), "gain"),
    (dict(beta_min=0.0), "beta_min"), (dict(beta_min=2.0, beta_max=1.0), "beta_max"),
    (dict(smoothing=1.0), "smoothing"), (dict(nats_per_dim=-1.0), "nats_per_dim"),
    (dict(max_log_step=0.0), "max_log_step"),
])
def test_rate_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TargetRate(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(coverage=1.0), "coverage"), (dict(level=0.0), "level"), (dict(rows=0), "rows"),
    (dict(draws=0), "draws"),
])
def test_calibrated_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CalibratedBeta(**kwargs)


def test_coverage_measure_matches_calibrate(small_split):
    from bjepa.diagnostics import calibrate

    train, test = small_split
    m, _ = _train(small_split, TargetRate(warmup=1000), steps=30)
    ctl = CalibratedBeta(draws=1)
    ctl.check_model(m)
    got = ctl.measure(m, test.obs[:-1], test.obs[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctl.seed)
        draws = m.target_dist(test.obs[1:]).sample((1,))
    want = calibrate(m.predict(test.obs[:-1]), draws[0]).coverage_at(0.9)
    assert got == pytest.approx(want, abs=1e-9)


@pytest.mark.slow
def test_cli_quick(tmp_path, capsys):
    import json

    from bjepa.cli import main

    out = tmp_path / "ab"
    assert main(["adaptive-beta", "--quick", "--steps", "130", "--schemes", "rate,fixed",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["scheme"] for r in rows] == ["rate", "fixed"]
    assert rows[1]["beta"] == 1.0 and rows[0]["beta"] != 1.0
    assert rows[0]["trace"][0] == [0, 1.0]
    assert (out / "beta_traces.png").stat().st_size > 0
    assert "| rate | 1 | 8 | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["adaptive-beta", "--schemes", "nope", "--out", str(tmp_path / "x")])


def test_beta_reaches_the_metrics_file(small_split, tmp_path):
    import json

    path = tmp_path / "m.jsonl"
    m, hist = _train(small_split, TargetRate(nats_per_dim=50.0, **FAST), metrics_path=path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["beta"] for r in lines] == [r["beta"] for r in hist.records]
    assert lines[-1]["beta"] == pytest.approx(m.beta) and m.beta < 0.1


def test_steers_bjepa(small_split):
    from bjepa.models import BJEPA

    x = small_split[0].obs
    torch.manual_seed(0)
    m = BJEPA(x.shape[1], 4, beta=0.1)
    ctl = CalibratedBeta(coverage=0.999, rows=256, **FAST)
    hist = fit(m, x[:-1], x[1:], steps=24, lr=3e-3, batch_size=128, seed=0, log_every=4,
               callbacks=[ctl])
    assert m.beta < 0.1 and hist.records[-1]["beta"] == pytest.approx(m.beta)
    assert "train_coverage90" in hist.records[-1]


def test_rate_floor_lowers_beta_when_coverage_is_met(small_split):
    # a trivial coverage alone lets β rise; an unreachable information floor pulls it down
    ctl = CalibratedBeta(coverage=0.05, rows=256, min_rate=50.0, **FAST)
    m, hist = _train(small_split, ctl)
    assert m.beta < 0.1 / 5
    assert "rate" in hist.records[-1] and "train_coverage90" in hist.records[-1]
    assert ctl.state(m)["rate"] == pytest.approx(hist.records[-1]["rate"])
    with pytest.raises(ValueError, match="min_rate"):
        CalibratedBeta(min_rate=0.0)
