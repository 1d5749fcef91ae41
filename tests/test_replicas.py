"""Replica-vectorised training and the compiled ELBO: same numbers as the plain path."""

import pytest
import torch

from bjepa.data import noisy_tv
from bjepa.inference import fit
from bjepa.inference.fit import resolve_elbo, set_seed
from bjepa.inference.replicas import ReplicaStack
from bjepa.models import BJEPA, JEPA, VAE, VJEPA, AutoRegressive

CLASSES = {"vjepa": VJEPA, "bjepa": BJEPA, "jepa": JEPA, "vae": VAE, "ar": AutoRegressive}
SEEDS, SIGMAS = [3, 1, 4], [0.0, 2.0, 8.0]
JIT_STEPS = 200  # elbo="auto" compiles runs this long


def _data():
    splits = [noisy_tv.make_split(s, sd, train_steps=300, test_steps=20)[0]
              for s, sd in zip(SIGMAS, SEEDS, strict=True)]
    return ([d.obs[:-1].double() for d in splits], [d.obs[1:].double() for d in splits])


def _build(cls, seed, **kw):
    set_seed(seed)
    return cls(20, 4, **kw).double()


def _max_diff(a, b):
    pairs = list(zip(a.parameters(), b.parameters(), strict=True))
    if a.target_encoder is not None:
        pairs += list(zip(a.target_encoder.parameters(), b.target_encoder.parameters(),
                          strict=True))
    return max((pa - pb).abs().max().item() for pa, pb in pairs)


@pytest.mark.parametrize("name,elbo,batch_size", [
    ("vjepa", "meanfield", None), ("vjepa", "trace", 64), ("bjepa", "meanfield", 64),
    ("jepa", "meanfield", None), ("jepa", "meanfield", 64), ("vae", "meanfield", 64),
    ("ar", "trace", None)])
def test_batched_training_equals_training_alone(name, elbo, batch_size):
    """Each replica ends where the same seed trained alone ends (noise, mini-batches, all)."""
    cls = CLASSES[name]
    ctx, tgt = _data()
    target = None if name == "vae" else tgt
    alone = []
    for seed, c, t in zip(SEEDS, ctx, tgt, strict=True):
        m = _build(cls, seed)
        fit(m, c, None if name == "vae" else t, steps=25, lr=1e-2, seed=seed, elbo=elbo,
            batch_size=batch_size, progress=False)
        alone.append(m)
    batch = [_build(cls, seed) for seed in SEEDS]
    hists = fit(batch, ctx, target, steps=25, lr=1e-2, seed=SEEDS, elbo=elbo,
                batch_size=batch_size, progress=False)
    assert len(hists) == len(SEEDS)
    for a, b in zip(alone, batch, strict=True):
        assert _max_diff(a, b) < 1e-10
    # the batch really trained: the parameters moved away from their start
    fresh = _build(cls, SEEDS[0])
    assert _max_diff(fresh, batch[0]) > 1e-3


def test_chunked_batches_equal_one_batch():
    ctx, tgt = _data()
    one = [_build(VJEPA, s) for s in SEEDS]
    fit(one, ctx, tgt, steps=15, lr=1e-2, seed=SEEDS, progress=False)
    chunked = [_build(VJEPA, s) for s in SEEDS]
    fit(chunked, torch.stack(ctx), torch.stack(tgt), steps=15, lr=1e-2, seed=SEEDS,
        replicas=2, progress=False)
    for a, b in zip(one, chunked, strict=True):
        assert _max_diff(a, b) < 1e-10


def test_shared_minibatches_train_every_replica_reproducibly():
    ctx, tgt = _data()
    runs = []
    for _ in range(2):
        models = [_build(VJEPA, s) for s in SEEDS]
        hists = fit(models, ctx, tgt, steps=40, lr=1e-2, seed=SEEDS, batch_size=64,
                    replica_batches="shared", progress=False)
        runs.append(models)
    for a, b in zip(*runs, strict=True):
        assert _max_diff(a, b) < 1e-12  # same seeds, same numbers (to BLAS rounding)
    alone = _build(VJEPA, SEEDS[1])
    fit(alone, ctx[1], tgt[1], steps=40, lr=1e-2, seed=SEEDS[1], batch_size=64,
        progress=False)
    assert _max_diff(alone, runs[0][1]) > 1e-6  # other rows than its run alone ...
    assert len({h.final_loss for h in hists}) == len(SEEDS)  # ... but its own training


def test_minibatch_replicas_train_and_report_own_losses():
    """Each history ends with its own replica's loss, evaluated with its own seed: the same
    replicas listed in another order report the same final losses, each to its model."""
    ctx, tgt = _data()
    finals = {}
    for order in ([0, 1, 2], [1, 2, 0]):
        models = [_build(VJEPA, SEEDS[i]) for i in order]
        hists = fit(models, [ctx[i] for i in order], [tgt[i] for i in order], steps=40,
                    lr=1e-2, seed=[SEEDS[i] for i in order], batch_size=64, progress=False)
        finals[tuple(order)] = {i: h.final_loss for i, h in zip(order, hists, strict=True)}
        z = models[0].encode(ctx[order[0]].double())
        assert z.shape == (ctx[0].shape[0], 4)
    a, b = finals.values()
    assert all(torch.isfinite(torch.tensor(list(a.values()))))
    for i in a:
        assert a[i] == pytest.approx(b[i], rel=1e-9, abs=0), (i, a, b)
    assert len(set(a.values())) == len(a)


def test_replica_errors_name_the_problem():
    ctx, tgt = _data()
    with pytest.raises(ValueError, match="same arguments"):
        ReplicaStack([VJEPA(20, 4), VJEPA(20, 4, beta=0.1)])
    with pytest.raises(ValueError, match="architecture"):
        ReplicaStack([VJEPA(20, 4), BJEPA(20, 4)])
    with pytest.raises(ValueError, match="weight priors"):
        ReplicaStack([BJEPA(20, 4, weight_prior="normal")] * 2)
    with pytest.raises(ValueError, match="one shape"):
        fit([VJEPA(20, 4), VJEPA(20, 4)], [ctx[0], ctx[1][:-5]], [tgt[0], tgt[1][:-5]],
            steps=2, progress=False)
    with pytest.raises(ValueError, match="seed has 1 entries"):
        fit([VJEPA(20, 4), VJEPA(20, 4)], ctx[:2], tgt[:2], seed=[0], steps=2, progress=False)
    with pytest.raises(ValueError, match="checkpoint"):
        fit([VJEPA(20, 4)], ctx[:1], tgt[:1], steps=2, checkpoint_dir="x", progress=False)
    with pytest.raises(ValueError, match="replica_batches"):
        fit([VJEPA(20, 4)], ctx[:1], tgt[:1], steps=2, replica_batches="mine", progress=False)
    with pytest.raises(ValueError, match="batch a list"):
        fit(VJEPA(20, 4), ctx[0], tgt[0], steps=2, replicas=4, progress=False)
    with pytest.raises(ValueError, match="obs_dim|last"):
        fit([VJEPA(21, 4)], ctx[:1], tgt[:1], steps=2, progress=False)


@pytest.mark.parametrize("elbo", ["meanfield", "trace"])
def test_compiled_elbo_gives_the_eager_numbers(elbo):
    ctx, tgt = _data()
    out = {}
    for variant in (elbo, f"jit-{elbo}"):
        m = _build(VJEPA, 0)
        h = fit(m, ctx[1], tgt[1], steps=30, lr=1e-2, elbo=variant, batch_size=64,
                progress=False)
        assert h.elbo == variant
        out[variant] = m
    assert _max_diff(out[elbo], out[f"jit-{elbo}"]) < 1e-9


def test_compiled_elbo_traces_once_per_variant():
    from bjepa.inference.fit import make_elbo

    ctx, tgt = _data()
    m = _build(VJEPA, 0)
    loss = make_elbo("jit-meanfield")
    for _ in range(5):
        loss.loss(m.model, m.guide, ctx[0], tgt[0])
    assert len(loss._compiled_keys) == 1
    m.freeze_encoder = True  # the warm-up flag is read inside the program: its own graph
    loss.loss(m.model, m.guide, ctx[0], tgt[0])
    assert len(loss._compiled_keys) == 2


def test_auto_elbo_compiles_long_runs_only():
    m = VJEPA(20, 4)
    assert resolve_elbo("auto", m, 1000) == "jit-meanfield"
    assert resolve_elbo("auto", m, 50) == "meanfield"
    assert resolve_elbo("auto", BJEPA(20, 4, weight_prior="normal"), 1000) == "meanfield"
    assert resolve_elbo("trace", m, 1000) == "trace"


def test_compiled_training_resumes_exactly(tmp_path):
    ctx, tgt = _data()
    full = _build(VJEPA, 0)
    fit(full, ctx[0], tgt[0], steps=20, lr=1e-2, elbo="jit-meanfield", progress=False)
    part = _build(VJEPA, 0)
    fit(part, ctx[0], tgt[0], steps=10, lr=1e-2, elbo="jit-meanfield", progress=False,
        checkpoint_dir=tmp_path, warmup_steps=2)
    resumed = _build(VJEPA, 0)
    fit(resumed, ctx[0], tgt[0], steps=20, lr=1e-2, elbo="jit-meanfield", progress=False,
        checkpoint_dir=tmp_path, resume=True)
    # eager ELBOs resume bit for bit (test_reliability); a re-traced graph agrees to rounding
    assert _max_diff(full, resumed) < 1e-12


def test_noisy_tv_batched_runs_equal_one_at_a_time():
    from bjepa.experiments.noisy_tv import NoisyTVConfig, run

    cfg = dict(models=["vjepa", "jepa", "vae"], sigmas=[0.0, 8.0], seeds=[0, 1], steps=30,
               batch_size=64,
               train_steps=300, test_steps=100, progress=False)
    batched = run(NoisyTVConfig(**cfg, replica_batches="own"))
    alone = run(NoisyTVConfig(**cfg, replicas=1))
    assert [r["replicas"] for r in batched] == [4] * len(batched)  # 2 σ × 2 seeds
    for b, a in zip(batched, alone, strict=True):
        assert (b["model"], b["sigma"], b["seed"]) == (a["model"], a["sigma"], a["seed"])
        assert b["signal_r2"] == pytest.approx(a["signal_r2"], abs=1e-4)


@pytest.mark.cuda
def test_single_and_batched_training_on_cuda():
    ctx, tgt = _data()
    ctx, tgt = [c.float() for c in ctx], [t.float() for t in tgt]
    m = VJEPA(20, 4)
    hist = fit(m, ctx[0], tgt[0], steps=JIT_STEPS, device="cuda", progress=False)
    assert hist.elbo == "jit-meanfield" and next(m.parameters()).is_cuda
    assert m.predict(ctx[0].cuda()).mean.is_cuda
    alone = []
    for seed, c, t in zip(SEEDS, ctx, tgt, strict=True):
        set_seed(seed)
        a = VJEPA(20, 4)
        fit(a, c, t, steps=20, lr=1e-2, seed=seed, device="cuda", progress=False)
        alone.append(a)
    batch = []
    for seed in SEEDS:
        set_seed(seed)
        batch.append(VJEPA(20, 4))
    fit(batch, ctx, tgt, steps=20, lr=1e-2, seed=SEEDS, device="cuda", progress=False)
    for a, b in zip(alone, batch, strict=True):
        assert _max_diff(a, b) < 1e-4


def _compile_cases():
    from bjepa.models import ActionVJEPA

    def action():
        m = ActionVJEPA(6, 3, action_dim=2)
        x, u = torch.randn(201, 6), torch.randn(200, 2)
        return m, m.pack(x[:-1], u), x[1:]

    def conv():
        m = VJEPA(2 * 20 * 20, 3, encoder="conv", hidden_dim=16)
        x = torch.randn(41, 2 * 20 * 20)
        return m, x[:-1], x[1:]

    def head(name):
        def make():
            m = VJEPA(8, 2, encoder="mlp", head=name, hidden_dim=16)
            x = torch.randn(201, 8)
            return m, x[:-1], x[1:]
        return make

    return {"mdn": head("mdn"), "full": head("full"), "action": action, "conv": conv}


@pytest.mark.parametrize("case", ["mdn", "full", "action", "conv"])
def test_compiled_elbo_matches_eager_across_model_families(case):
    """elbo='auto' compiles every model of 200+ steps: check other heads and encoders."""
    make = _compile_cases()[case]
    out = []
    for elbo in ("meanfield", "jit-meanfield"):
        set_seed(0)
        m, c, t = make()
        m.double()  # float64: Adam turns float32 rounding in near-zero gradients into lr steps
        fit(m, c.double(), t.double(), steps=12, lr=1e-2, elbo=elbo, batch_size=32,
            progress=False)
        out.append(m)
    # the optimised TorchScript graph may pick other convolution kernels: their rounding, turned
    # into Adam steps on near-zero gradients, stays far below one step (lr = 1e-2)
    assert _max_diff(*out) < (1e-3 if case == "conv" else 1e-8)


def test_replica_noise_drawn_on_several_threads_is_each_generators_own_stream():
    """Large CPU noise is drawn by a pool of threads; each replica's slice still holds exactly
    what its own generator gives alone, whatever the thread count."""
    from bjepa.inference.replicas import PARALLEL_NOISE_MIN, draw_replica_noise

    shape = (PARALLEL_NOISE_MIN // 4 + 7, 4)
    threads = torch.get_num_threads()
    try:
        drawn = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            gens = [torch.Generator().manual_seed(s) for s in range(5)]
            drawn[n] = torch.cat([draw_replica_noise(shape, torch.float32,
                                                     torch.device("cpu"), gens)
                                  for _ in range(2)], 1)  # two steps: the streams go on
    finally:
        torch.set_num_threads(threads)
    alone = torch.stack([torch.cat([torch.empty(shape).normal_(generator=g) for _ in range(2)])
                         for g in (torch.Generator().manual_seed(s) for s in range(5))])
    for n, values in drawn.items():
        assert torch.equal(values, alone), n
