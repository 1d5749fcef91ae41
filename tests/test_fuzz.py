"""Property-based fuzzing of the public API (issue 9).

Every call gets a mix of good and bad arguments: random shapes, dtypes, NaN/inf, empty inputs,
the "meta" device (a stand-in for a wrong device on a CPU-only machine) and extreme
hyper-parameters. The property: the call either works — and then its result is well formed
and finite — or it raises a documented exception (``ValueError``, ``TypeError``,
``CheckpointError``, ``NonFiniteLossError``) whose message names one of the arguments that were
bad. When every argument is good, the call must work.

Runs are derandomised (the same examples every run, no example database) so CI is
reproducible; ``BJEPA_FUZZ_EXAMPLES=<n>`` scales the number of examples and
``BJEPA_FUZZ_RANDOM=1`` explores new ones (a long local fuzzing session).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bjepa.data import noisy_tv
from bjepa.inference import fit
from bjepa.inference.checkpoint import CheckpointError, load_checkpoint, load_model
from bjepa.inference.fit import NonFiniteLossError
from bjepa.metrics import linear_probe_r2
from bjepa.models import JEPA, VAE, VJEPA, AutoRegressive

SCALE = float(os.environ.get("BJEPA_FUZZ_EXAMPLES", "1"))
ALLOWED = (ValueError, TypeError, CheckpointError, NonFiniteLossError)


def fuzz(examples: int):
    """Hypothesis settings for one property: ``examples`` (× ``BJEPA_FUZZ_EXAMPLES``)."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    derandomize=not os.environ.get("BJEPA_FUZZ_RANDOM"), database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


class Args:
    """Draws each argument from a *good* or a *bad* pool and remembers which were bad."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw
        self.bad: set[str] = set()
        #: arguments with edge values that may work or be refused (naming them)
        self.iffy: set[str] = set()

    def chance(self, p: float) -> bool:
        """True with probability ``p`` (``st.floats`` favours 0.0, so draw a percentile)."""
        return self.draw(st.sampled_from(range(100))) < 100 * p

    def pick(self, name: str, good: st.SearchStrategy, bad: st.SearchStrategy | None = None,
             p_bad: float = 0.08) -> Any:
        if bad is not None and self.chance(p_bad):
            self.bad.add(name)
            return self.draw(bad)
        return self.draw(good)


def check_error(err: BaseException, bad: set[str], aliases: dict[str, list[str]] | None = None
                ) -> None:
    """``err`` is a documented error that names one of the ``bad`` arguments."""
    event(f"refused: {type(err).__name__}")
    assert isinstance(err, ALLOWED), f"undocumented {type(err).__name__}: {err}"
    assert bad, f"all arguments were good, yet {type(err).__name__}: {err}"
    names = {n for b in bad for n in [b, *(aliases or {}).get(b, [])]}
    text = str(err)
    # the name as a word of its own ("x" is not named by "expected" or "max_steps")
    named = [n for n in names if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", text)]
    assert named, f"{type(err).__name__}({text!r}) names none of {bad}"


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


BAD_INTS = st.sampled_from([0, -1, -7, 2.5, True, None, "3", float("nan")])
BAD_FLOATS = st.sampled_from([-1.0, -1e-9, float("nan"), float("inf"), float("-inf"), "0.1",
                              None, True])


# -- data generator -------------------------------------------------------------------------------
@st.composite
def split_args(draw):
    a = Args(draw)
    kw = dict(
        sigma=a.pick("sigma", st.floats(0, 1e4), BAD_FLOATS),
        seed=draw(st.integers(0, 2**32 - 1)),  # bad seeds: a known hole, see HOLES
        train_steps=a.pick("train_steps", st.integers(2, 40), st.sampled_from([0, 1, -4, 2.5])),
        test_steps=a.pick("test_steps", st.integers(2, 40), st.sampled_from([0, 1, -4, None])),
        obs_dim=a.pick("obs_dim", st.integers(1, 24), BAD_INTS),
        signal_dim=a.pick("signal_dim", st.integers(1, 6), BAD_INTS),
        distractor_dim=a.pick("distractor_dim", st.integers(1, 6), BAD_INTS),
    )
    return kw, a.bad


@fuzz(120)
@given(split_args())
def test_fuzz_make_split(case):
    kw, bad = case
    try:
        train, test = noisy_tv.make_split(**kw)
    except Exception as err:  # noqa: BLE001 - the property is about which errors
        check_error(err, bad)
        return
    event("works")
    assert not bad, f"accepted bad {bad}: {kw}"
    for part, n in [(train, kw["train_steps"]), (test, kw["test_steps"])]:
        assert part.obs.shape == (n, kw["obs_dim"]) and part.obs.dtype == torch.float32
        assert part.signal.shape == (n, kw["signal_dim"])
        assert finite(part.obs) and finite(part.signal) and finite(part.distractor)


# -- model constructors ---------------------------------------------------------------------------
MODEL_PARAMS = {
    VJEPA: ["encoder", "head", "hidden_dim", "beta", "tau", "init", "target_scale_init"],
    JEPA: ["encoder", "hidden_dim", "tau", "init", "sim_weight", "var_weight", "cov_weight"],
    VAE: ["encoder", "hidden_dim", "beta"],
    AutoRegressive: ["encoder", "hidden_dim", "beta"],
}
GOOD = {
    "encoder": st.sampled_from(["linear", "mlp"]),
    "head": st.sampled_from(["diag", "full"]),
    "hidden_dim": st.integers(1, 24),
    "beta": st.floats(0, 1e3),
    "tau": st.one_of(st.floats(0, 1), st.sampled_from(["cosine", "cosine:0.9:1.0"])),
    "init": st.sampled_from(["random", "cca"]),
    "target_scale_init": st.floats(1e-3, 10.0),
    "sim_weight": st.floats(0, 100), "var_weight": st.floats(0, 100),
    "cov_weight": st.floats(0, 100),
}
BAD = {
    "encoder": st.sampled_from(["cnn", "", None, 3]),
    "head": st.sampled_from(["cauchy", None, 1]),
    "hidden_dim": BAD_INTS,
    "beta": BAD_FLOATS,
    "tau": st.sampled_from([1.5, -0.1, float("nan"), "cosine:2:3", "linear", None]),
    "init": st.sampled_from(["zeros", None]),
    "target_scale_init": BAD_FLOATS,
    "sim_weight": BAD_FLOATS, "var_weight": BAD_FLOATS, "cov_weight": BAD_FLOATS,
}
#: holes in models/*.py (reported with a diff, see docs/reliability.md): excluded here, pinned
#: by test_known_holes below
KNOWN_HOLES: set[str] = set()


@st.composite
def model_args(draw, cls):
    a = Args(draw)
    obs = a.pick("obs_dim", st.integers(1, 12), BAD_INTS)
    latent = a.pick("latent_dim", st.integers(1, 6), BAD_INTS)
    kw = {}
    for name in MODEL_PARAMS[cls]:
        bad = None if name in KNOWN_HOLES else BAD[name]
        kw[name] = a.pick(name, GOOD[name], bad, p_bad=0.1)
    return obs, latent, kw, a.bad


@pytest.mark.parametrize("cls", list(MODEL_PARAMS), ids=lambda c: c.__name__)
@fuzz(60)
@given(data=st.data())
def test_fuzz_model_constructors(cls, data):
    obs, latent, kw, bad = data.draw(model_args(cls))
    try:
        m = cls(obs, latent, **kw)
    except Exception as err:  # noqa: BLE001
        check_error(err, bad)
        return
    event("works")
    assert not bad, f"accepted bad {bad}: {obs, latent, kw}"
    assert all(finite(p) for p in m.parameters())
    z = m.encode(torch.randn(3, obs))
    assert z.shape == (3, latent) and finite(z)


# -- fit ------------------------------------------------------------------------------------------
try:
    from bjepa.models import BJEPA as BJEPA_CLS
except ImportError:  # pragma: no cover - BJEPA is optional while it is being written
    BJEPA_CLS = None
FIT_MODELS = [c for c in (VJEPA, JEPA, VAE, AutoRegressive, BJEPA_CLS) if c is not None]
DTYPES_OK = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPES_BAD = [torch.int64, torch.bool, torch.complex64, torch.uint8]


@st.composite
def data_tensor(draw, a: Args, name: str, rows: int, cols: int):
    """A (rows, cols) float32 tensor, or with probability a bad variant of it."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    x = torch.randn(rows, cols, generator=g) * scale
    kind = a.pick(name, st.just("ok"),
                  st.sampled_from(["nan", "inf", "int", "bool", "complex", "meta", "1d", "3d",
                                   "cols", "list", "empty"]), p_bad=0.1)
    if kind == "ok":
        dtype = draw(st.sampled_from(DTYPES_OK))
        return x.to(dtype)
    if kind in ("nan", "inf") and rows:
        x[draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] = float(kind)
        return x
    return {"nan": x, "inf": x, "int": x.long(), "bool": x > 0, "complex": x.to(torch.complex64),
            "meta": x.to("meta"), "1d": x.reshape(-1), "3d": x[None], "cols": x[:, :-1],
            "list": x.tolist(), "empty": x[:0]}[kind]


@st.composite
def fit_args(draw):
    a = Args(draw)
    cls = draw(st.sampled_from(FIT_MODELS))
    obs = draw(st.integers(2, 6))
    latent = draw(st.integers(1, obs))  # latent_dim > obs_dim with init="cca": a known hole
    extreme = a.chance(0.1)  # extreme hyper-parameters may diverge (documented)
    hp: dict[str, Any] = {"encoder": draw(st.sampled_from(["linear", "mlp"])), "hidden_dim": 8}
    if extreme and "beta" in MODEL_PARAMS.get(cls, ["beta"]):
        hp["beta"] = draw(st.sampled_from([1e-30, 1e10, 1e30]))
    if extreme and cls in (VJEPA, BJEPA_CLS):
        hp["target_scale_init"] = draw(st.sampled_from([1e-6, 50.0]))
    if cls is BJEPA_CLS:
        hp["weight_prior"] = draw(st.sampled_from([None, "normal"]))
    model = cls(obs, latent, **hp)
    rows = a.pick("context", st.integers(8, 40), st.sampled_from([0, 1, 2]), p_bad=0.05)
    if rows:  # one or two rows: may work (a VAE can fit one frame) or be refused
        a.iffy |= a.bad & {"context"}
        a.bad -= {"context"}
    context = draw(data_tensor(a, "context", rows, obs))
    target = draw(data_tensor(a, "target", rows, obs))
    if a.chance(0.05):
        target = target[:-1] if isinstance(target, torch.Tensor) else target
        a.bad.add("target")
    if a.chance(0.05):
        target = None
        if cls.needs_target:
            a.bad.add("target")
    extreme_lr = a.chance(0.1)
    extreme = extreme or extreme_lr
    kw = dict(
        steps=a.pick("steps", st.integers(1, 3), st.sampled_from([0, -1, 2.5, True, None])),
        lr=(draw(st.sampled_from([1e10, 1e30, 3e38, 1e300])) if extreme_lr else
            a.pick("lr", st.floats(1e-5, 1.0), BAD_FLOATS)),
        # batch_size=1 for JEPA (VICReg's variance of one row) is a known hole, see HOLES
        batch_size=a.pick("batch_size", st.one_of(st.none(), st.integers(
            2 if cls is JEPA else 1, 100)), st.sampled_from([0, -2, 1.5, "8"])),
        elbo=a.pick("elbo", st.sampled_from(["meanfield", "trace"]),
                    st.sampled_from(["magic", None, 1])),
        num_particles=a.pick("num_particles", st.integers(1, 2), BAD_INTS),
        warmup_steps=a.pick("warmup_steps", st.one_of(st.none(), st.integers(0, 5)),
                            st.sampled_from([-1, 1.5, "2"])),
        log_every=a.pick("log_every", st.integers(1, 3), BAD_INTS),
        seed=a.pick("seed", st.one_of(st.none(), st.integers(0, 2**32 - 1)),
                    st.sampled_from([-1, 2**40, 1.5, "0"])),
        on_nonfinite=a.pick("on_nonfinite", st.sampled_from(["raise", "skip"]),
                            st.sampled_from(["ignore", None])),
        device=a.pick("device", st.sampled_from([None, "cpu", torch.device("cpu")]),
                      st.sampled_from(["meta", "cuda:7", "gpu", 3])),
        progress=False,
    )
    return model, context, target, kw, a.bad, a.iffy, extreme


@fuzz(150)
@given(fit_args())
@pytest.mark.filterwarnings("ignore::bjepa.models.preprocess.UnstandardizedDataWarning")
def test_fuzz_fit(case):
    model, context, target, kw, bad, iffy, extreme = case
    try:
        h = fit(model, context, target, **kw)
    except NonFiniteLossError as err:  # divergence: a documented outcome of extreme settings
        event("diverged: NonFiniteLossError")
        assert extreme or bad or iffy, f"diverged with good arguments: {err}"
        assert "step" in str(err)
        return
    except Exception as err:  # noqa: BLE001
        check_error(err, bad | iffy, {"target": ["needs a target"], "device": ["CUDA", "cuda"]})
        return
    event("works")
    assert not bad, f"accepted bad {bad}"
    assert all(finite(p) for p in model.parameters())
    assert len(h.records) >= 1
    losses = [r["loss"] for r in h.records]
    assert kw["on_nonfinite"] == "skip" or all(math.isfinite(v) for v in losses)


# -- encode / predict -----------------------------------------------------------------------------
@st.composite
def encode_args(draw):
    a = Args(draw)
    cls = draw(st.sampled_from([VJEPA, JEPA, VAE, AutoRegressive]))
    obs = draw(st.integers(1, 6))
    model = cls(obs, draw(st.integers(1, 3)))
    rows = draw(st.integers(1, 20))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randn(rows, obs, generator=g) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    kind = a.pick("x", st.just("ok"), st.sampled_from(
        ["nan", "inf", "int", "bool", "meta", "1d", "3d", "cols", "list", "empty", "none"]),
        p_bad=0.5)
    x = {"ok": x, "nan": x.clone().fill_(float("nan")), "inf": x.clone().fill_(float("inf")),
         "int": x.long(), "bool": x > 0, "meta": x.to("meta"), "1d": x.reshape(-1),
         "3d": x[None], "cols": torch.randn(rows, obs + 1), "list": x.tolist(), "empty": x[:0],
         "none": None}[kind]
    return model, x, a.bad


@fuzz(120)
@given(encode_args())
def test_fuzz_encode_and_predict(case):
    model, x, bad = case
    calls = [("encode", model.encode)]
    if hasattr(model, "predict"):
        calls.append(("predict", model.predict))
    for _, call in calls:
        try:
            out = call(x)
        except Exception as err:  # noqa: BLE001
            check_error(err, bad, {"x": ["context"]})
            continue
        event("works")
        assert not bad, f"accepted bad {bad}"
        value = out if isinstance(out, torch.Tensor) else out.mean
        assert value.shape == (x.shape[0], model.latent_dim) and finite(value)


# -- linear probe ---------------------------------------------------------------------------------
@st.composite
def probe_args(draw):
    a = Args(draw)
    k, m = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    n1, n2 = draw(st.integers(k + 2, 40)), draw(st.integers(3, 30))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    w = torch.randn(k, m, generator=g)
    z1, z2 = torch.randn(n1, k, generator=g), torch.randn(n2, k, generator=g)
    args = {"z_train": z1, "y_train": z1 @ w + 0.1 * torch.randn(n1, m, generator=g),
            "z_test": z2, "y_test": z2 @ w + 0.1 * torch.randn(n2, m, generator=g)}
    for name in list(args):
        kind = a.pick(name, st.just("ok"), st.sampled_from(
            ["nan", "inf", "int", "meta", "1d", "3d", "rows", "list", "empty"]),
            p_bad=0.1)  # "cols" (a column mismatch) is a known hole, see HOLES
        t = args[name]
        args[name] = {"ok": t, "nan": t.clone().fill_(float("nan")),
                      "inf": t.clone().fill_(float("inf")), "int": t.long(), "meta": t.to("meta"),
                      "1d": t[:, 0], "3d": t[None], "rows": t[:-1], "cols": t[:, :0],
                      "list": t.tolist(), "empty": t[:0]}[kind]
    return args, a.bad


@fuzz(120)
@given(probe_args())
def test_fuzz_linear_probe(case):
    args, bad = case
    try:
        r2 = linear_probe_r2(**args)
    except Exception as err:  # noqa: BLE001
        check_error(err, bad)
        return
    event("works")
    assert not bad, f"accepted bad {bad}"
    assert isinstance(r2, float) and r2 <= 1.0 + 1e-9
    # the same number from an independent least-squares solve in NumPy
    z1, y1, z2, y2 = (args[k].double().numpy() for k in ("z_train", "y_train", "z_test",
                                                         "y_test"))
    design = np.c_[z1, np.ones(len(z1))]
    coef = np.linalg.lstsq(design, y1, rcond=None)[0]
    pred = np.c_[z2, np.ones(len(z2))] @ coef
    expect = np.mean(1 - ((y2 - pred) ** 2).sum(0) / ((y2 - y2.mean(0)) ** 2).sum(0))
    # the library adds a ridge of 1e-9 × the mean eigenvalue: a ~1e-9 relative effect here
    assert r2 == pytest.approx(expect, rel=1e-6, abs=1e-6)


# -- checkpoint loading ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    m = VJEPA(5, 2)
    fit(m, torch.randn(30, 5), torch.randn(30, 5), steps=2, progress=False, checkpoint_dir=d)
    path = d / "step-000000002.pt"
    return path.read_bytes(), load_checkpoint(path)


def _same(a: Any, b: Any, where: str = "checkpoint") -> None:
    """``a`` and ``b`` hold the same keys, values and tensor bytes (NaN equal to NaN)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert a.cpu().numpy().tobytes() == b.cpu().numpy().tobytes(), f"{where}: bytes differ"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


@fuzz(150)
@given(data=st.data())
def test_fuzz_checkpoint_loading(checkpoint_bytes, tmp_path_factory, data):
    """Truncated, bit-flipped, spliced or random files: a clear CheckpointError, or — only when
    the bytes that matter are intact — exactly the original checkpoint."""
    original, reference = checkpoint_bytes
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "random", "append"]))
    blob = bytearray(original)
    if how == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "splice":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i:i + 16] = data.draw(st.binary(min_size=1, max_size=16))
    elif how == "random":
        blob = bytearray(data.draw(st.binary(max_size=2048)))
    else:
        blob += data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path_factory.mktemp("fz") / "c.pt"
    path.write_bytes(bytes(blob))
    try:
        payload = load_checkpoint(path)
        model = load_model(path)
    except CheckpointError as err:
        event("refused: CheckpointError")
        assert str(path) in str(err)
        return
    event("loaded: intact")
    _same(payload, reference)  # accepted only if nothing that matters changed
    assert all(finite(p) for p in model.parameters())


# -- holes found by fuzzing in files this suite's author does not own ----------------------------
def _must_refuse(call, name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        call()


def _must_work(call) -> None:
    out = call()
    value = out if isinstance(out, torch.Tensor) else out.mean
    assert finite(value)


def _xy(rows: int = 20, cols: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(rows + 1, cols)
    return x[:-1], x[1:]


HOLES = [
    pytest.param(lambda: _must_refuse(lambda: VJEPA(4, 2, target_scale_init=0.0),
                                      "target_scale_init"), id="vjepa-target_scale_init-zero"),
    pytest.param(lambda: _must_work(lambda: VJEPA(4, 2, target_scale_init=1e4).target_dist(
        torch.randn(3, 4)).stddev), id="vjepa-target_scale_init-big"),
    pytest.param(lambda: _must_refuse(lambda: VJEPA(4, 2, target_scale_init=float("nan")),
                                      "target_scale_init"), id="vjepa-target_scale_init-nan"),
    pytest.param(lambda: _must_refuse(lambda: VJEPA(4, 2, tau="cosine:x:1"), "tau"),
                 id="tau-spec-not-a-number"),
    pytest.param(lambda: _must_refuse(lambda: fit(VJEPA(2, 3), *_xy(cols=2), steps=1,
                                                  progress=False), "latent_dim"),
                 id="cca-latent_dim-above-features"),
    pytest.param(lambda: _must_refuse(lambda: fit(JEPA(4, 2), *_xy(), steps=2, batch_size=1,
                                                  progress=False), "batch_size"),
                 id="jepa-batch_size-one"),
    pytest.param(lambda: _must_work(lambda: VJEPA(4, 2).encode(torch.randn(3, 4).double())),
                 id="encode-float64"),
    pytest.param(lambda: _must_work(lambda: VJEPA(4, 2).predict(torch.randn(3, 4).half())),
                 id="predict-float16"),
    pytest.param(lambda: _must_refuse(lambda: noisy_tv.make_split(seed=-1, train_steps=5,
                                                                  test_steps=5), "seed"),
                 id="make_split-seed-negative"),
    pytest.param(lambda: _must_refuse(lambda: noisy_tv.make_split(seed=2.5, train_steps=5,
                                                                  test_steps=5), "seed"),
                 id="make_split-seed-float"),
    pytest.param(lambda: _must_refuse(lambda: noisy_tv.make_split(sigma=1e300, train_steps=5,
                                                                  test_steps=5), "sigma"),
                 id="make_split-sigma-overflows"),
    pytest.param(lambda: _must_refuse(lambda: linear_probe_r2(
        torch.randn(9, 2), torch.randn(9, 1), torch.randn(9, 3), torch.randn(9, 1)), "z_test"),
        id="probe-column-mismatch-unnamed"),
    pytest.param(lambda: _must_refuse(lambda: linear_probe_r2(
        torch.randn(2, 2), torch.randn(2, 1), torch.randn(9, 2), torch.randn(9, 1)), "z_train"),
        id="probe-too-few-rows-unnamed"),
]


@pytest.mark.parametrize("check", HOLES)
def test_known_holes(check):
    check()
