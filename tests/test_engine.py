"""The one training loop: module structure, records with the ELBO's parts, validation,
callbacks, streaming, TensorBoard, and errors found when tried as a new user."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from bjepa.cli import main as cli_main
from bjepa.data import noisy_tv
from bjepa.inference import Callback, EarlyStopping, elbo_parts, fit
from bjepa.models import BJEPA, JEPA, VAE, VJEPA

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def xy():
    train, _ = noisy_tv.make_split(2.0, 0, train_steps=301, test_steps=50)
    return train.obs[:-1], train.obs[1:]


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Circular imports only show when a module is the first one imported: every module of the
    package is imported first, one after another, with bjepa's modules dropped in between."""
    code = r'''
import importlib, pkgutil, sys
import bjepa, bjepa.models, bjepa.inference
names = sorted({m.name for pkg in (bjepa, bjepa.models, bjepa.inference)
                for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                if not m.name.endswith(".__main__")})
failed = []
for name in names:
    for mod in [m for m in sys.modules if m == "bjepa" or m.startswith("bjepa.")]:
        del sys.modules[mod]
    try:
        importlib.import_module(name)
    except Exception as err:
        failed.append(f"{name}: {type(err).__name__}: {err}")
print(len(names))
assert not failed, failed
'''
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 40  # the walk really visited the package


def test_models_do_not_depend_on_the_trainer():
    offending = [f"{p.name}:{i}" for p in (ROOT / "models").glob("*.py")
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if "bjepa.inference" in line]
    assert not offending


@pytest.mark.parametrize("cls", [VJEPA, BJEPA])
def test_elbo_parts_sum_to_the_meanfield_loss(cls, xy):
    torch.manual_seed(0)
    m = cls(20, 4, beta=0.3)
    x_c, x_t = xy
    parts = elbo_parts(m, x_c, x_t, seed=5)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        loss = TraceMeanField_ELBO().loss(m.model, m.guide, x_c, x_t)
    assert set(parts) >= {"nll_dynamics", "kl_z_target"}
    assert sum(parts.values()) == pytest.approx(loss, rel=1e-5, abs=1e-3)
    # β scales the KL part: the same model at β = 0.6 doubles it
    m.beta = 0.6
    parts2 = elbo_parts(m, x_c, x_t, seed=5)
    assert parts2["kl_z_target"] == pytest.approx(2 * parts["kl_z_target"], rel=1e-6)
    assert parts2["nll_dynamics"] == pytest.approx(parts["nll_dynamics"], rel=1e-6)


def test_jepa_records_vicreg_terms_and_parts_do_not_change_training(xy):
    x_c, x_t = xy
    runs = []
    for eval_every in (1, 1000):
        torch.manual_seed(1)
        m = JEPA(20, 4)
        h = fit(m, x_c, x_t, steps=12, batch_size=64, lr=1e-2, progress=False,
                eval_every=eval_every, elbo="meanfield")
        runs.append((m, h))
    (a, ha), (b, hb) = runs
    assert any(k.startswith("nll_") for k in ha.records[3])  # the factor sites, by name
    assert not any(k.startswith("nll_") for k in hb.records[3])
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)  # evaluating parts draws from a fork of the RNG


def test_records_carry_parts_and_validation_loss(xy):
    x_c, x_t = xy
    m = VJEPA(20, 4)
    h = fit(m, x_c[:200], x_t[:200], steps=30, log_every=5, progress=False,
            val=(x_c[200:], x_t[200:]))
    steps = [r["step"] for r in h.records]
    assert steps == [0, 5, 10, 15, 20, 25, 29]
    for r in h.records:
        assert {"loss", "nll_dynamics", "kl_z_target", "val_loss", "tau"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("val_loss", "nll_dynamics", "kl_z_target"))


def test_early_stopping_on_the_validation_loss(xy):
    x_c, x_t = xy

    class Worse(Callback):  # the validation loss seen by the stopper gets worse every time
        def on_record(self, trainer, record):
            record["val_loss"] = float(record["step"])

    stopper = EarlyStopping(patience=3)
    h = fit(VJEPA(20, 4), x_c, x_t, steps=200, log_every=2, progress=False,
            val=(x_c[:50], x_t[:50]), callbacks=[Worse(), stopper])
    assert h.stopped_early and stopper.stopped_at == 6  # best at 0, then 3 worse: 2, 4, 6
    assert h.records[-1]["step"] == 6


def test_streaming_from_a_dataloader_equals_full_batch_training(xy):
    x_c, x_t = xy
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_c, x_t),
                                         batch_size=len(x_c), shuffle=False)
    a, b = VJEPA(20, 4), VJEPA(20, 4)
    b.load_state_dict(a.state_dict())
    fit(a, x_c, x_t, steps=15, progress=False, elbo="meanfield", seed=3)
    fit(b, loader, steps=15, progress=False, elbo="meanfield", seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_streamed_batches_are_scaled_like_plate_subsampling(xy):
    """A streamed batch of B of N rows gets Pyro's mini-batch scale N / B, as an in-memory
    ``pyro.plate(subsample_size=B)`` does; the loader draws from its own stream, so two runs
    with one seed are identical."""
    from bjepa.inference.engine import Batches, scaled

    x_c, x_t = xy
    ds = torch.utils.data.TensorDataset(x_c, x_t)
    m = VJEPA(20, 4)
    batches = Batches(m, torch.utils.data.DataLoader(ds, batch_size=50, shuffle=True), None,
                      None, torch.device("cpu"), torch.float32, {}, seed=0)
    args, kwargs = batches.next()
    tr = pyro.poutine.trace(scaled(m.model)).get_trace(*args, **kwargs)
    ref = pyro.poutine.trace(m.model).get_trace(x_c, x_t, batch_size=50)
    assert tr.nodes["dynamics"]["scale"] == pytest.approx(ref.nodes["dynamics"]["scale"])
    assert tr.nodes["dynamics"]["scale"] == pytest.approx(len(x_c) / 50)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = VJEPA(20, 4)
        loader = torch.utils.data.DataLoader(ds, batch_size=50, shuffle=True)
        runs.append(fit(m, loader, steps=15, progress=False, seed=2).loss)
    assert runs[0] == runs[1]


def test_tensorboard_event_file_holds_the_loss_parts(xy, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x_c, x_t = xy
    fit(VJEPA(20, 4), x_c, x_t, steps=10, log_every=3, progress=False,
        tensorboard_dir=tmp_path / "tb", val=(x_c[:40], x_t[:40]))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/nll_dynamics", "train/kl_z_target", "train/val_loss"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [0, 3, 6, 9]


def test_explicit_compiled_elbo_is_refused_for_untraceable_models(xy):
    with pytest.raises(ValueError, match="cannot be compiled"):
        fit(VAE(20, 4), xy[0], None, steps=3, elbo="jit-meanfield", progress=False)


def test_bad_paths_and_devices_fail_before_anything_is_written(xy, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    m = VJEPA(20, 4)
    with pytest.raises(ValueError, match="checkpoint_dir .* is a file"):
        fit(m, *xy, steps=2, checkpoint_dir=a_file, progress=False)
    with pytest.raises(ValueError, match="metrics_path .* is a folder"):
        fit(m, *xy, steps=2, metrics_path=tmp_path, progress=False)
    with pytest.raises(ValueError, match="'gpu' is not a torch device"):
        fit(m, *xy, steps=2, device="gpu", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:7'"):
            fit(m, *xy, steps=2, device="cuda:7", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a CPU-only machine")
def test_cli_refuses_a_missing_device_with_one_line_and_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli_main(["noisy-tv", "--quick", "--device", "cuda", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "CUDA is not available" in err and "Traceback" not in err
    assert not out.exists()
    (tmp_path / "f.txt").write_text("x")
    assert cli_main(["noisy-tv", "--quick", "--out", str(tmp_path / "f.txt" / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_model_kwargs_reach_the_program(xy):
    seen = []

    class Spy(VJEPA):
        def model(self, context, target, batch_size=None, eta=None):
            seen.append(eta)
            return super().model(context, target, batch_size)

        def guide(self, context, target, batch_size=None, eta=None):
            return super().guide(context, target, batch_size)

    eta = torch.arange(len(xy[0]), dtype=torch.float32)
    fit(Spy(20, 4), *xy, steps=3, progress=False, elbo="meanfield",
        model_kwargs={"eta": eta})
    assert seen and all(e is not None and torch.equal(e, eta) for e in seen)


def test_shared_batch_replica_stacks_compile_and_match_eager_training():
    """With shared mini-batches a replica stack's program is static, so the compiled ELBO
    trains it — to float rounding the steps the eager ELBO takes."""
    from bjepa.inference.replicas import ReplicaStack

    train, _ = noisy_tv.make_split(2.0, 0, train_steps=301, test_steps=50)
    ctx = torch.stack([train.obs[:-1]] * 3)
    tgt = torch.stack([train.obs[1:]] * 3)
    assert ReplicaStack([VJEPA(20, 4)] * 2, batches="shared").training_hints().jit_safe
    assert not ReplicaStack([VJEPA(20, 4)] * 2).training_hints().jit_safe
    runs = {}
    for elbo in ("meanfield", "jit-meanfield"):
        models = []
        for s in range(3):
            torch.manual_seed(s)
            models.append(VJEPA(20, 4))
        hists = fit(models, ctx, tgt, steps=30, lr=1e-2, seed=[0, 1, 2], batch_size=64,
                    replica_batches="shared", elbo=elbo, progress=False)
        assert all(h.elbo == elbo for h in hists)
        runs[elbo] = models
    for a, b in zip(runs["meanfield"], runs["jit-meanfield"], strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_sequence_models_train_one_at_a_time_in_noisy_tv(tmp_path):
    """Models that cannot be stacked (they read one time series) are refused by replica
    training with the fix, and noisy-tv trains them one at a time by itself."""
    from bjepa.experiments.noisy_tv import NoisyTVConfig, run
    from bjepa.models.registry import build_model

    m = build_model("lgssm", 20, 4)
    assert not m.training_hints().stackable
    with pytest.raises(ValueError, match="one at a time"):
        fit([build_model("lgssm", 20, 4), build_model("lgssm", 20, 4)],
            torch.randn(2, 50, 20), None, steps=2, progress=False)
    cfg = NoisyTVConfig(models=["lgssm"], sigmas=[0.0], seeds=[0, 1], steps=3,
                        train_steps=300, test_steps=100, progress=False)
    rows = run(cfg)
    assert [r["seed"] for r in rows] == [0, 1] and all(r["replicas"] == 1 for r in rows)
