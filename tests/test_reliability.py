"""Reliability and security (issue 9): the fused SVI optimiser, training checkpoints, exact
resume, divergence handling, Ctrl-C, crash safety under SIGKILL, untrusted checkpoint files,
locked run folders and ``bjepa noisy-tv --resume``."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from bjepa.cli import main
from bjepa.inference import fit
from bjepa.inference.checkpoint import (
    CheckpointError,
    CheckpointManager,
    _digest,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from bjepa.inference.fit import FusedSVI, NonFiniteLossError
from bjepa.models import JEPA, VAE, VJEPA, AutoRegressive
from bjepa.runs import RunFolder

TESTS = Path(__file__).resolve().parent
fit_module = importlib.import_module("bjepa.inference.engine")  # the loop module, not fit


@pytest.fixture
def xy(small_split):
    tr, _ = small_split
    return tr.obs[:-1], tr.obs[1:]


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a model's state (EMA target included), keyed without its Pyro scope."""
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace(getattr(model, "_pyro_name", "?"), "M")
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs"


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k]), f"param {i} {k}"


def _metrics(path: Path, **tags) -> list[tuple[int, float | None]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if all(r.get(k) == v for k, v in tags.items())]


# -- the fused optimiser ----------------------------------------------------------------------
def test_fused_svi_is_an_svi_stepping_one_fused_adam():
    m = VJEPA(6, 2, init="random")
    x = torch.randn(30, 6)
    svi = FusedSVI(m.model, m.guide, m.parameters(), TraceMeanField_ELBO(), lr=0.01)
    assert isinstance(svi, SVI)
    assert isinstance(svi.optim, torch.optim.Adam) and svi.optim.defaults["foreach"]
    assert len(svi.optim.param_groups) == 1
    assert len(svi.optim.param_groups[0]["params"]) == len(list(m.parameters()))
    before = [p.detach().clone() for p in m.parameters()]
    loss = svi.step(x[:-1], x[1:])
    assert isinstance(loss, float)
    assert all(p.grad is None for p in m.parameters())
    assert len(svi.optim.state) == len(before)  # every parameter got an Adam state
    assert all(not torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))


def test_fused_svi_step_is_adam_on_the_pyro_elbo():
    """One FusedSVI step equals a hand-written Adam step on Pyro's differentiable ELBO."""
    torch.manual_seed(0)
    a = VJEPA(6, 2, init="random")
    b = VJEPA(6, 2, init="random")
    b.load_state_dict(a.state_dict())
    x = torch.randn(30, 6)
    svi = FusedSVI(a.model, a.guide, a.parameters(), TraceMeanField_ELBO(), lr=0.05)
    opt = torch.optim.Adam(b.parameters(), lr=0.05)
    for _ in range(3):
        pyro.set_rng_seed(7)
        got = svi.step(x[:-1], x[1:])
        pyro.set_rng_seed(7)
        loss = TraceMeanField_ELBO().differentiable_loss(b.model, b.guide, x[:-1], x[1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss = loss.detach()
        assert got == pytest.approx(loss.item(), rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_fused_svi_refuses_a_parameter_outside_the_model():
    m = VJEPA(6, 2, init="random")

    def guide(context, target, batch_size=None):
        pyro.param("stray_scale", torch.ones(1))
        m.guide(context, target, batch_size)

    svi = FusedSVI(m.model, guide, m.parameters(), TraceMeanField_ELBO())
    x = torch.randn(10, 6)
    with pytest.raises(RuntimeError, match="stray_scale"):
        svi.step(x[:-1], x[1:])


def test_fused_svi_nonfinite_step_changes_nothing():
    m = VJEPA(6, 2, init="random")
    svi = FusedSVI(m.model, m.guide, m.parameters(), TraceMeanField_ELBO())
    x = torch.randn(10, 6)
    x[3, 1] = float("nan")
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        svi.step(x[:-1], x[1:])
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))
    assert all(p.grad is None for p in m.parameters()) and not svi.optim.state


# -- divergence -------------------------------------------------------------------------------
class Boom(VJEPA):
    """A VJEPA whose loss (``"loss"``) or gradient (``"grad"``) turns NaN while ``boom`` is
    set."""

    boom: str = ""

    def model(self, context, target, batch_size=None):
        super().model(context, target, batch_size)
        w = self.context_encoder.weight
        if self.boom == "loss":
            pyro.factor("boom", w.sum() * float("nan"))
        elif self.boom == "grad":  # value 0, gradient 0.5 / sqrt(0) * 0 = NaN
            pyro.factor("boom", (w * 0.0).sqrt().sum())


@pytest.mark.parametrize("kind,what", [("loss", "non-finite values in a distribution"),
                                       ("grad", "non-finite gradient")])
def test_divergence_names_step_and_last_good_checkpoint(kind, what, xy, tmp_path):
    m = Boom(20, 4)

    def arm(step, record):
        m.boom = kind if step == 9 else m.boom

    with pytest.raises(NonFiniteLossError) as info:
        fit(m, *xy, steps=20, progress=False, checkpoint_dir=tmp_path, checkpoint_every=4,
            callback=arm)
    msg = str(info.value)
    assert what in msg and "at step 10" in msg
    assert str(tmp_path / "step-000000008.pt") in msg
    good = load_checkpoint(tmp_path / "step-000000008.pt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in good.values() if torch.is_tensor(v))


def test_divergence_without_checkpoints_says_so(xy):
    m = Boom(20, 4)
    m.boom = "loss"
    with pytest.raises(NonFiniteLossError, match=r"at step 0; last good checkpoint: none"):
        fit(m, *xy, steps=5, progress=False)


def test_skip_nonfinite_steps_counts_them_and_keeps_parameters(xy, tmp_path):
    m = Boom(20, 4)
    snap = {}

    def arm(step, record):
        m.boom = "loss" if step in (2, 3) else ("grad" if step == 4 else "")
        snap[step] = [p.detach().clone() for p in m.parameters()]

    path = tmp_path / "m.jsonl"
    h = fit(m, *xy, steps=12, progress=False, on_nonfinite="skip", callback=arm,
            metrics_path=path)
    assert h.skipped_steps == 3
    skipped = [r["step"] for r in h.records if r["loss"] != r["loss"]]
    assert skipped == [3, 4, 5]  # NaN loss (3, 4) or NaN gradient (5): recorded as NaN
    assert [r["skipped"] for r in h.records][:7] == [0, 0, 0, 1, 2, 3, 3]
    for step in (3, 4, 5):  # no parameter moved during a skipped step
        assert all(torch.equal(a, b) for a, b in zip(snap[step - 1], snap[step], strict=True))
    assert "tau" not in h.records[3] and "tau" in h.records[6]  # nor did the EMA target
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[3]["loss"] is None and lines[5]["skipped"] == 3
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_skip_gives_up_after_many_consecutive_failures(xy, monkeypatch):
    monkeypatch.setattr(fit_module, "MAX_CONSECUTIVE_SKIPS", 5)
    m = Boom(20, 4)
    m.boom = "loss"
    with pytest.raises(NonFiniteLossError, match="5 non-finite steps in a row up to step 4"):
        fit(m, *xy, steps=50, progress=False, on_nonfinite="skip")


def test_huge_learning_rate_never_returns_nonfinite_parameters(xy):
    m = VJEPA(20, 4)
    try:
        fit(m, *xy, steps=30, lr=1e38, progress=False)
    except NonFiniteLossError as err:
        assert "step" in str(err)
    else:
        assert all(torch.isfinite(p).all() for p in m.parameters())


# -- training checkpoints ---------------------------------------------------------------------
def test_training_checkpoint_holds_everything(xy, tmp_path):
    from bjepa import __version__

    m = VJEPA(20, 4)
    fit(m, *xy, steps=10, lr=2e-3, batch_size=64, progress=False, checkpoint_dir=tmp_path,
        checkpoint_every=3, keep_last=2)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [".lock", "step-000000009.pt", "step-000000010.pt"]  # last 2, no temp
    ck = load_checkpoint(tmp_path / "step-000000010.pt")
    assert ck["library_version"] == __version__ and ck["model_class"] == "VJEPA"
    assert ck["hparams"] == m.hparams and ck["meta"] == {"finished": True}
    t = ck["training"]
    assert t["step"] == 10
    assert t["config"]["lr"] == 2e-3 and t["config"]["batch_size"] == 64
    assert t["config"]["warmup_steps"] == 1 and t["config"]["elbo"] == "meanfield"
    assert len(t["optimizer"]["state"]) == len(list(m.parameters()))
    assert set(t["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert [r["step"] for r in fit_module.TrainingHistory.from_state(t["history"]).records] \
        == list(range(10))
    ema = ck["state_dict"]["_extra_state"]
    torch.testing.assert_close(ema["weight"], m.target_encoder.weight, rtol=0, atol=0)


def test_checkpoint_at_step_zero_resumes_without_reinitialising(xy, tmp_path, monkeypatch):
    torch.manual_seed(0)
    ref = VJEPA(20, 4)
    fit(ref, *xy, steps=6, progress=False)
    torch.manual_seed(0)
    m = VJEPA(20, 4)
    fit(m, *xy, steps=6, progress=False, checkpoint_dir=tmp_path / "a", keep_last=10)
    zero = tmp_path / "a" / "step-000000000.pt"
    assert load_checkpoint(zero)["training"]["optimizer"]["state"] == {}  # before any step
    (tmp_path / "b").mkdir()
    shutil.copy(zero, tmp_path / "b" / zero.name)
    torch.manual_seed(99)
    again = VJEPA(20, 4)
    monkeypatch.setattr(again, "init_from_data", lambda *a: pytest.fail("init re-ran"))
    fit(again, *xy, steps=6, progress=False, checkpoint_dir=tmp_path / "b", resume=True)
    _assert_same_model(ref, again)


def _bjepa_with_weight_prior():
    try:
        from bjepa.models import BJEPA
    except ImportError:
        pytest.skip("bjepa.models.BJEPA is not available in this checkout")
    return BJEPA(20, 4, weight_prior="normal")


EXACT_CASES = {
    "vjepa-cca-stop-in-warmup": (lambda: VJEPA(20, 4), dict(), 2),
    "vjepa-minibatch-trace-elbo": (lambda: VJEPA(20, 4, init="random", head="full"),
                                   dict(batch_size=64, elbo="trace"), 15),
    "vjepa-mlp-cosine-tau": (lambda: VJEPA(20, 4, encoder="mlp", hidden_dim=8, tau="cosine"),
                             dict(batch_size=50, num_particles=2), 17),
    "jepa": (lambda: JEPA(20, 4), dict(batch_size=64), 20),
    "vae-constrained-param": (lambda: VAE(20, 4), dict(batch_size=64), 20),
    "bjepa-weight-prior": (_bjepa_with_weight_prior, dict(batch_size=64), 20),
}


@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_exact_resume_bit_for_bit(case, xy, tmp_path):
    """2N steps == N steps, stop, resume into a fresh model (other init, other seed), N more."""
    build, kw, stop = EXACT_CASES[case]
    steps = 30
    torch.manual_seed(0)
    ref = build()
    h_ref = fit(ref, *xy, steps=steps, seed=1, progress=False, metrics_path=tmp_path / "r.jsonl",
                checkpoint_dir=tmp_path / "ref", **kw)
    torch.manual_seed(0)
    first = build()
    h1 = fit(first, *xy, steps=steps, seed=1, progress=False, checkpoint_dir=tmp_path / "run",
             metrics_path=tmp_path / "m.jsonl", callback=lambda s, r: s == stop - 1, **kw)
    assert h1.stopped_early and len(h1.records) == stop
    torch.manual_seed(123)
    second = build()
    h2 = fit(second, *xy, steps=steps, seed=55, progress=False, checkpoint_dir=tmp_path / "run",
             metrics_path=tmp_path / "m.jsonl", resume=True, **kw)
    assert h2.resumed_from == stop
    _assert_same_model(ref, second)
    assert h2.loss == h_ref.loss
    assert _metrics(tmp_path / "m.jsonl") == _metrics(tmp_path / "r.jsonl")
    _assert_same_optimizer(load_checkpoint(h_ref.last_checkpoint)["training"]["optimizer"],
                           load_checkpoint(h2.last_checkpoint)["training"]["optimizer"])


def test_resume_of_a_finished_run_trains_nothing(xy, tmp_path, monkeypatch):
    m = VJEPA(20, 4)
    h = fit(m, *xy, steps=5, progress=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(FusedSVI, "step", lambda *a, **k: pytest.fail("trained again"))
    again = VJEPA(20, 4)
    h2 = fit(again, *xy, steps=5, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert h2.loss == h.loss and h2.resumed_from == 5
    _assert_same_model(m, again)


def test_resume_refuses_what_does_not_match(xy, tmp_path):
    fit(VJEPA(20, 4), *xy, steps=3, progress=False, checkpoint_dir=tmp_path)
    cases = [
        (lambda: fit(JEPA(20, 4), *xy, steps=3, checkpoint_dir=tmp_path, resume=True,
                     progress=False), "holds a VJEPA model, not a JEPA"),
        (lambda: fit(VJEPA(20, 4, beta=0.5), *xy, steps=3, checkpoint_dir=tmp_path,
                     resume=True, progress=False), "beta=0.01"),
        (lambda: fit(VJEPA(20, 4), *xy, steps=3, lr=0.1, checkpoint_dir=tmp_path, resume=True,
                     progress=False), "lr"),
        (lambda: fit(VJEPA(20, 4), xy[0] + 1, xy[1], steps=3, checkpoint_dir=tmp_path,
                     resume=True, progress=False), "training data"),
    ]
    for call, match in cases:
        with pytest.raises(CheckpointError, match=match):
            call()
    with pytest.raises(ValueError, match="already holds checkpoints"):
        fit(VJEPA(20, 4), *xy, steps=3, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        fit(VJEPA(20, 4), *xy, steps=3, resume=True, progress=False)
    with pytest.raises(ValueError, match="steps=2 is below"):
        fit(VJEPA(20, 4), *xy, steps=2, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_a_checkpoint_dir_is_locked_while_training(xy, tmp_path):
    seen = []

    def try_second(step, record):
        with pytest.raises(FileExistsError, match="checkpoint_dir .* in use"):
            fit(VJEPA(20, 4), *xy, steps=2, checkpoint_dir=tmp_path, progress=False)
        seen.append(step)
        return True

    fit(VJEPA(20, 4), *xy, steps=5, checkpoint_dir=tmp_path, progress=False, callback=try_second)
    assert seen == [0]
    fit(VJEPA(20, 4), *xy, steps=5, checkpoint_dir=tmp_path, progress=False, resume=True)


# -- Ctrl-C -----------------------------------------------------------------------------------
def test_ctrl_c_leaves_a_checkpoint_and_the_metrics_then_resumes_exactly(xy, tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    torch.manual_seed(0)
    ref = VJEPA(20, 4)
    fit(ref, *xy, steps=20, progress=False, metrics_path=tmp_path / "ref.jsonl")

    def press_ctrl_c(step, record):
        if step == 6:
            signal.raise_signal(signal.SIGINT)  # the real signal, as from a terminal

    torch.manual_seed(0)
    m = VJEPA(20, 4)
    with pytest.raises(KeyboardInterrupt):
        fit(m, *xy, steps=20, progress=False, checkpoint_dir=tmp_path / "ck",
            metrics_path=tmp_path / "m.jsonl", callback=press_ctrl_c)
    assert signal.getsignal(signal.SIGINT) is handler  # handler restored
    ck = load_checkpoint(tmp_path / "ck" / "step-000000007.pt")  # the step finished, then stop
    assert ck["training"]["step"] == 7
    assert [s for s, _ in _metrics(tmp_path / "m.jsonl")] == list(range(7))
    again = VJEPA(20, 4)
    fit(again, *xy, steps=20, progress=False, checkpoint_dir=tmp_path / "ck", resume=True,
        metrics_path=tmp_path / "m.jsonl")
    _assert_same_model(ref, again)
    assert _metrics(tmp_path / "m.jsonl") == _metrics(tmp_path / "ref.jsonl")


def test_second_ctrl_c_stops_at_once_with_a_checkpoint(xy, tmp_path):
    def press_twice(step, record):
        if step == 3:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # raises here

    with pytest.raises(KeyboardInterrupt):
        fit(VJEPA(20, 4), *xy, steps=20, progress=False, checkpoint_dir=tmp_path,
            callback=press_twice)
    assert load_checkpoint(tmp_path / "step-000000004.pt")["training"]["step"] == 4


# -- crash safety -----------------------------------------------------------------------------
def test_interrupted_write_keeps_the_previous_checkpoint(xy, tmp_path, monkeypatch):
    m = VJEPA(20, 4)
    fit(m, *xy, steps=3, progress=False, checkpoint_dir=tmp_path)
    real_save = torch.save

    def torn_save(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        fit(VJEPA(20, 4), *xy, steps=6, progress=False, checkpoint_dir=tmp_path, resume=True,
            checkpoint_every=1)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "step-000000000.pt",
                                                          "step-000000003.pt"]
    assert load_checkpoint(tmp_path / "step-000000003.pt")["training"]["step"] == 3


#: kills per run, cycling through the kill points (``BJEPA_KILLS=300`` for a long session)
KILLS = max(8, int(os.environ.get("BJEPA_KILLS", "12")))
KILL_STEPS = 3 * KILLS + 4


def test_sigkill_at_every_kind_of_moment_never_corrupts_a_checkpoint(tmp_path):
    """Start a training process, SIGKILL it at a chosen point — half-way through writing a
    checkpoint, before or after its rename, between an optimiser step and the EMA update —
    check the newest checkpoint loads and no progress was lost, restart it; repeat. The child
    says when it reached the point, so where the kill lands does not depend on timing. Finally
    let it finish: it must equal an uninterrupted run bit for bit."""
    ctx = multiprocessing.get_context("forkserver")
    # the server imports these once; each job is then forked from it in milliseconds
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "pyro", "bjepa.inference",
                                "bjepa.models"])
    sys.path.insert(0, str(TESTS))
    import _kill_points
    import _kill_train

    ref = ctx.Process(target=_kill_train.train, args=(str(tmp_path / "ref"), KILL_STEPS, None))
    ref.start()
    ref.join(120)
    assert ref.exitcode == 0

    run = tmp_path / "run"
    last_step = -1
    torn = 0
    for i in range(KILLS):
        point = _kill_points.POINTS[i % len(_kill_points.POINTS)]
        nth = 1 + (i // len(_kill_points.POINTS)) % 3
        receive, send = ctx.Pipe(duplex=False)
        job = ctx.Process(target=_kill_points.train_until,
                          args=(str(run), KILL_STEPS, point, nth, send))
        job.start()
        send.close()
        assert receive.poll(120), f"kill {i}: the job never reached {point}"
        assert receive.recv() == point, f"kill {i}: the job finished before {point} #{nth}"
        job.kill()
        job.join()
        receive.close()
        temps = sorted(run.glob(".step-*.tmp"))
        checkpoints = sorted(run.glob("step-*.pt"))
        if point == "mid-write":  # a torn temporary file, never a torn checkpoint
            assert len(temps) == 1 and temps[0].stat().st_size > 0, temps
            torn += 1
        elif point == "before-rename":
            assert len(temps) == 1, temps
        else:
            assert not temps, (point, temps)
        if not checkpoints:  # killed while writing the very first one
            assert last_step == -1 and point in ("mid-write", "before-rename"), point
            continue
        step = load_checkpoint(checkpoints[-1])["training"]["step"]  # never raises
        assert step >= last_step, (point, step, last_step)  # progress is never lost
        if point == "after-rename":  # the renamed file is the newest and complete
            assert step > last_step
        last_step = step
    assert torn == sum(1 for i in range(KILLS) if i % len(_kill_points.POINTS) == 0)
    assert last_step < KILL_STEPS  # every kill landed before the end of training

    final = ctx.Process(target=_kill_train.train, args=(str(run), KILL_STEPS))
    final.start()
    final.join(120)
    assert final.exitcode == 0
    assert not list(run.glob(".step-*.tmp"))
    a = load_checkpoint(tmp_path / "ref" / f"step-{KILL_STEPS:09d}.pt")
    b = load_checkpoint(run / f"step-{KILL_STEPS:09d}.pt")
    assert _digest(a["state_dict"]) == _digest(b["state_dict"])
    assert _digest(a["training"]["optimizer"]) == _digest(b["training"]["optimizer"])
    assert _metrics(run / "metrics.jsonl") == _metrics(tmp_path / "ref" / "metrics.jsonl")


# -- untrusted files --------------------------------------------------------------------------
class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('pwned')",))


@pytest.mark.parametrize("how", ["raw-pickle", "torch-save", "inside-a-checkpoint"])
def test_malicious_pickle_is_refused_without_running(how, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if how == "raw-pickle":
        path.write_bytes(pickle.dumps(Evil(marker)))
    elif how == "torch-save":
        torch.save(Evil(marker), path)
    else:
        torch.save({"format": "bjepa-checkpoint", "version": 2, "model_class": "VJEPA",
                    "hparams": {}, "state_dict": {"w": Evil(marker)}, "meta": {}}, path)
    # the payload really is live: plain pickle would run it
    with pytest.raises(CheckpointError, match="not a safe bjepa checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a safe"):
        load_model(path)
    assert not marker.exists()
    if how == "raw-pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()


@pytest.fixture
def good_checkpoint(tmp_path):
    m = VJEPA(6, 2)
    fit(m, torch.randn(40, 6), torch.randn(40, 6), steps=2, progress=False,
        checkpoint_dir=tmp_path / "ck")
    return tmp_path / "ck" / "step-000000002.pt"


def test_every_truncation_is_a_clear_error(good_checkpoint, tmp_path):
    data = good_checkpoint.read_bytes()
    cuts = sorted({0, 1, 2, 10, 100, len(data) - 1, len(data) - 22,
                   *range(0, len(data), max(len(data) // 60, 1))})
    bad = tmp_path / "cut.pt"
    for n in cuts:
        if n >= len(data):
            continue
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated|corrupt|not a"):
            load_checkpoint(bad)


def test_flipped_bytes_are_caught_or_harmless(good_checkpoint, tmp_path):
    data = bytearray(good_checkpoint.read_bytes())
    reference = load_checkpoint(good_checkpoint)
    rng = random.Random(1)
    bad = tmp_path / "flip.pt"
    caught = 0
    for _ in range(60):
        flipped = bytearray(data)
        i = rng.randrange(len(flipped))
        flipped[i] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        try:
            payload = load_checkpoint(bad)
        except CheckpointError:
            caught += 1
        else:  # e.g. a flip in zip padding: then the contents must be exactly the same
            assert _digest(payload) == _digest(reference)
    assert caught > 30


def _resave(payload: dict, path: Path, *, fix_digest: bool = True) -> None:
    payload = dict(payload)
    payload.pop("digest", None)
    if fix_digest:
        payload["digest"] = _digest(payload)
    torch.save(payload, path)


def test_wrong_or_tampered_checkpoints_give_clear_errors(good_checkpoint, tmp_path):
    ck = load_checkpoint(good_checkpoint)
    bad = tmp_path / "bad.pt"
    cases = [
        ({**ck, "version": 99}, "checkpoint version 99"),
        ({**ck, "format": "other"}, "not a bjepa checkpoint"),
        ({**ck, "model_class": "GPT"}, "unknown model class 'GPT'"),
        ({**ck, "hparams": {**ck["hparams"], "obs_dim": -1}}, "constructor arguments"),
        ({**ck, "state_dict": {k: v[:1] if torch.is_tensor(v) else v
                               for k, v in ck["state_dict"].items()}}, "does not fit"),
        ({**ck, "meta": "not a dict"}, "malformed"),
    ]
    for payload, match in cases:
        _resave(payload, bad)
        with pytest.raises(CheckpointError, match=match):
            load_model(bad)
    tampered = {**ck, "state_dict": {**ck["state_dict"]}}
    key = next(k for k, v in tampered["state_dict"].items() if torch.is_tensor(v))
    tampered["state_dict"][key] = tampered["state_dict"][key] + 1
    torch.save({**tampered, "digest": _digest({k: v for k, v in ck.items()})}, bad)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(bad)
    torch.save([1, 2, 3], bad)
    with pytest.raises(CheckpointError, match="not a bjepa checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="holds a VJEPA model, not a JEPA"):
        load_model(good_checkpoint, model_class=JEPA)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path)


def test_save_refuses_values_that_could_not_be_loaded_safely(tmp_path):
    with pytest.raises(TypeError, match=r"meta\['obj'\] holds a object"):
        save_checkpoint(tmp_path / "c.pt", VJEPA(6, 2), meta={"obj": object()})
    assert not list(tmp_path.iterdir())


def test_model_checkpoints_round_trip_for_every_model(tmp_path):
    for m in [VJEPA(6, 2), JEPA(6, 2), VAE(6, 2), AutoRegressive(6, 2)]:
        path = save_checkpoint(tmp_path / f"{type(m).__name__}.pt", m)
        _assert_same_model(m, load_model(path))


def test_bjepa_with_weight_posterior_round_trips(tmp_path):
    """The autoguide's parameters are named after the model's Pyro scope; load_model renames
    them into the fresh instance's scope."""
    m = _bjepa_with_weight_prior()
    path = save_checkpoint(tmp_path / "b.pt", m)
    _assert_same_model(m, load_model(path))


def test_checkpoint_manager_cleans_stale_temp_files(tmp_path):
    (tmp_path / ".step-000000001.pt.abc.tmp").write_bytes(b"torn")
    (tmp_path / "notes.txt").write_text("kept")
    with CheckpointManager(tmp_path, keep_last=1) as mgr:
        assert mgr.latest() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.txt"]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


# -- run folders ------------------------------------------------------------------------------
def test_run_folder_is_locked_within_and_across_processes(tmp_path):
    out = tmp_path / "run"
    first = RunFolder(out)
    with pytest.raises(FileExistsError, match="in use by another bjepa process"):
        RunFolder(out, overwrite=True)
    first.close()
    with RunFolder(out, overwrite=True):
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bjepa.runs import RunFolder; "
         f"f = RunFolder({str(out)!r}, overwrite=True); print('locked', flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=f"pid {holder.pid}"):
            RunFolder(out, resume=True)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with RunFolder(out, overwrite=True):  # a killed holder leaves no stale lock
        pass


def test_cli_refuses_a_folder_another_run_is_writing(tmp_path, capsys):
    out = tmp_path / "run"
    with RunFolder(out):
        rc = main(["noisy-tv", "--quick", "--steps", "2", "--out", str(out), "--no-progress"])
    assert rc == 2 and "in use by another bjepa process" in capsys.readouterr().err
    assert not (out / "config.json").exists()


CLI = ["noisy-tv", "--quick", "--models", "vjepa,jepa", "--sigmas", "8", "--seeds", "0-1",
       "--replicas", "1", "--steps", "30", "--no-progress"]


def test_cli_resume_after_ctrl_c_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    import bjepa.experiments.noisy_tv as exp

    assert main([*CLI, "--out", str(tmp_path / "ref")]) == 0
    calls = []
    real_fit = exp.fit

    def fit_with_ctrl_c(model, *args, **kwargs):
        tags = kwargs["metrics_tags"]
        calls.append((tags["model"], tags["seed"]))
        if tags == {"model": "jepa", "sigma": 8.0, "seed": 0}:
            kwargs["callback"] = lambda step, rec: step == 12 and signal.raise_signal(
                signal.SIGINT)
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(exp, "fit", fit_with_ctrl_c)
    out = tmp_path / "run"
    assert main([*CLI, "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert calls == [("vjepa", 0), ("jepa", 0)]
    assert (out / "checkpoints" / "vjepa-sigma8-seed0.pt").exists()
    calls.clear()
    assert main([*CLI, "--out", str(out)]) == 2  # no --resume: refused, nothing touched
    assert main([*CLI, "--out", str(out), "--resume", "--overwrite"]) == 2
    assert main([*CLI[:-3], "--steps", "31", "--no-progress", "--out", str(out),
                 "--resume"]) == 2
    assert "steps=31 (the run has 30)" in capsys.readouterr().err
    assert main([*CLI, "--out", str(out), "--resume"]) == 0
    assert calls == [("jepa", 0), ("vjepa", 1), ("jepa", 1)]  # the finished run is kept

    def rows(path):
        return [{k: v for k, v in r.items() if k != "train_seconds"}
                for r in json.loads((path / "results.json").read_text())]

    assert rows(out) == rows(tmp_path / "ref")
    key = ("model", "sigma", "seed", "step", "loss")
    lines = [tuple(json.loads(x)[k] for k in key) for x in
             (out / "metrics.jsonl").read_text().splitlines()]
    ref_lines = [tuple(json.loads(x)[k] for k in key) for x in
                 (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(lines) == sorted(ref_lines)  # every record once, with the same loss
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "ref" / "checkpoints").iterdir())
