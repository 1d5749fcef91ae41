"""elbo="inductor": the mean-field ELBO's loss and gradients as one TorchInductor graph."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from bjepa.inference import fit
from bjepa.models import BJEPA, JEPA, VAE, VJEPA, AutoRegressive

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                                reason="TorchInductor's CPU backend needs a C++ compiler")


def _data(n: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 1, 6, generator=g).cumsum(0) * 0.1
    return x[:-1], x[1:]


@pytest.mark.parametrize("batch_size", [None, pytest.param(64, marks=pytest.mark.slow)])
def test_inductor_training_equals_eager_training(batch_size):
    """Same seed, same noise and mini-batches (eager RNG kernels), same steps — including the
    encoder warm-up, which compiles a second graph without the encoder's gradients."""
    x_c, x_t = _data()
    runs = {}
    for elbo in ("meanfield", "inductor"):
        torch.manual_seed(3)
        m = VJEPA(6, 3)
        h = fit(m, x_c, x_t, steps=25, lr=1e-2, seed=1, elbo=elbo, batch_size=batch_size,
                warmup_steps=5, progress=False)
        runs[elbo] = (m, h)
    (a, ha), (b, hb) = runs["meanfield"], runs["inductor"]
    assert hb.elbo == "inductor"
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    for p, q in zip(a.target_encoder.parameters(), b.target_encoder.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert hb.loss == pytest.approx(ha.loss, rel=1e-4, abs=1e-4)


def test_inductor_is_refused_where_a_compiled_elbo_cannot_work():
    x_c, x_t = _data(50)
    with pytest.raises(ValueError, match="cannot be compiled"):
        fit(BJEPA(6, 3, weight_prior="normal"), x_c, x_t, steps=2, elbo="inductor",
            progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_c, x_t),
                                         batch_size=10)
    with pytest.raises(ValueError, match="inductor"):
        fit(VJEPA(6, 3), loader, steps=2, elbo="inductor", progress=False)


@pytest.mark.slow
def test_inductor_trains_a_vicreg_jepa():
    x_c, x_t = _data(120)
    torch.manual_seed(0)
    m = JEPA(6, 3)
    h = fit(m, x_c, x_t, steps=15, lr=1e-2, elbo="inductor", batch_size=32, progress=False)
    assert h.elbo == "inductor" and all(torch.isfinite(torch.tensor(h.loss)))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(a.target_encoder.parameters(), b.target_encoder.parameters(), strict=True):
        assert torch.equal(p, q)


def test_inductor_step_updates_with_adam_in_the_graph_and_resumes_bit_for_bit(tmp_path):
    """The whole step (gradients, NaN screen, Adam) is one graph; a run stopped inside the
    encoder warm-up and resumed into a fresh model ends exactly where an uninterrupted run
    ends, with the same Adam state (the state torch's Adam would hold)."""
    from bjepa.inference.checkpoint import load_checkpoint

    x_c, x_t = _data()
    kw = dict(steps=30, lr=1e-2, elbo="inductor", warmup_steps=5, progress=False)
    torch.manual_seed(0)
    ref = VJEPA(6, 3)
    h_ref = fit(ref, x_c, x_t, seed=1, checkpoint_dir=tmp_path / "ref", **kw)
    torch.manual_seed(0)
    first = VJEPA(6, 3)
    h1 = fit(first, x_c, x_t, seed=1, checkpoint_dir=tmp_path / "run",
             callback=lambda s, r: s == 2, **kw)
    assert h1.stopped_early
    torch.manual_seed(9)
    second = VJEPA(6, 3)
    h2 = fit(second, x_c, x_t, seed=4, checkpoint_dir=tmp_path / "run", resume=True, **kw)
    assert h2.resumed_from == 3
    _same(ref, second)
    assert h2.loss == h_ref.loss
    a = load_checkpoint(h_ref.last_checkpoint)["training"]["optimizer"]["state"]
    b = load_checkpoint(h2.last_checkpoint)["training"]["optimizer"]["state"]
    assert a.keys() == b.keys() and len(a) == len(list(ref.parameters()))
    for i in a:
        assert set(a[i]) == {"step", "exp_avg", "exp_avg_sq"}
        for k in a[i]:
            assert torch.equal(a[i][k], b[i][k])
    # the encoder was frozen for 5 of 30 steps: Adam counted only the steps it moved
    steps = sorted(float(s["step"]) for s in a.values())
    assert steps[0] == 25.0 and steps[-1] == 30.0


def test_inductor_step_with_a_non_finite_gradient_changes_nothing():
    from pyro.infer import TraceMeanField_ELBO

    from bjepa.inference import NonFiniteLossError
    from bjepa.inference.inductor import InductorELBO, InductorSVI

    x_c, x_t = _data(60)
    torch.manual_seed(0)
    m = VJEPA(6, 3, init="random")
    svi = InductorSVI(m.model, m.guide, m.parameters(), InductorELBO(TraceMeanField_ELBO()),
                      lr=1e-2)
    svi.step(x_c, x_t)
    before = [p.detach().clone() for p in m.parameters()]
    state = {i: {k: v.clone() for k, v in s.items()}
             for i, s in svi.optim.state_dict()["state"].items()}
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        svi.step(x_c * 1e30, x_t * 1e30)  # finite data whose squares overflow float32
    for p, q in zip(before, m.parameters(), strict=True):
        assert torch.equal(p, q)
    for i, s in svi.optim.state_dict()["state"].items():
        for k, v in s.items():
            assert torch.equal(v, state[i][k])
    assert math.isfinite(svi.step(x_c, x_t))  # and the next good step trains again


def test_compiled_graphs_are_shared_by_equal_programs_only():
    """A second model of the same architecture reuses the first one's compiled graph (the
    graph's code, constants and input shapes match); another β is another graph. Each
    training still equals its eager training."""
    from bjepa.inference import inductor

    x_c, x_t = _data()
    inductor._COMPILED.clear()
    sizes = []
    for seed, beta in [(1, 0.01), (2, 0.01), (3, 0.5)]:
        runs = {}
        for elbo in ("meanfield", "inductor"):
            torch.manual_seed(seed)
            m = VJEPA(6, 3, beta=beta)
            fit(m, x_c, x_t, steps=12, lr=1e-2, seed=seed, elbo=elbo, warmup_steps=0,
                progress=False)
            runs[elbo] = m
        for p, q in zip(runs["meanfield"].parameters(), runs["inductor"].parameters(),
                        strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
        sizes.append(len(inductor._COMPILED))
    assert sizes == [1, 1, 2]


def test_compiled_step_is_stored_in_inductors_disk_cache():
    """The compiled step goes through Inductor's FX graph cache (a new process loads it
    instead of generating and compiling the C++ again); without a shape environment Inductor
    bypasses that cache."""
    from torch._dynamo.utils import counters

    from bjepa.inference import inductor

    x_c, x_t = _data()
    inductor._COMPILED.clear()
    before = dict(counters["inductor"])
    torch.manual_seed(0)
    fit(VJEPA(6, 3), x_c, x_t, steps=3, lr=1e-2, seed=0, elbo="inductor", warmup_steps=0,
        progress=False)
    after = counters["inductor"]
    assert after["fxgraph_cache_bypass"] == before.get("fxgraph_cache_bypass", 0)
    assert after["fxgraph_cache_hit"] + after["fxgraph_cache_miss"] > \
        before.get("fxgraph_cache_hit", 0) + before.get("fxgraph_cache_miss", 0)


def test_inductor_replica_stack_equals_each_model_trained_alone():
    """Seeds batched into one compiled program (their own guide noise drawn outside the graph
    from per-replica generators) end where each model trained alone, eagerly, ends."""
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(81, 6, generator=g).cumsum(0) * 0.1 for _ in range(3)]
    seeds = [4, 5, 6]
    stacked = []
    for s in seeds:
        torch.manual_seed(s)
        stacked.append(VJEPA(6, 3))
    fit(stacked, [d[:-1] for d in data], [d[1:] for d in data], steps=15, lr=1e-2,
        seed=seeds, elbo="inductor", warmup_steps=3, progress=False)
    for s, d, m in zip(seeds, data, stacked, strict=True):
        torch.manual_seed(s)
        alone = VJEPA(6, 3)
        fit(alone, d[:-1], d[1:], steps=15, lr=1e-2, seed=s, elbo="meanfield", warmup_steps=3,
            progress=False)
        for p, q in zip(alone.parameters(), m.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [VAE, AutoRegressive])
def test_inductor_trains_generative_baselines_as_their_eager_elbo_does(cls):
    """The VAE's constrained observation scale defeats TorchScript (``elbo="auto"`` stays
    eager) but not a trace below Python: compiled training equals eager training."""
    x_c, x_t = _data()
    runs = {}
    for elbo in ("meanfield", "inductor"):
        torch.manual_seed(2)
        m = cls(6, 3)
        fit(m, x_c, None if cls is VAE else x_t, steps=20, lr=1e-2, seed=3, elbo=elbo,
            batch_size=64, progress=False)
        runs[elbo] = m
    for (name, p), q in zip(runs["meanfield"].named_parameters(),
                            runs["inductor"].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_auto_compiles_with_inductor_only_where_it_pays(monkeypatch):
    from bjepa.inference import svi
    from bjepa.inference.svi import resolve_elbo

    vjepa, vae = VJEPA(20, 4), VAE(20, 4)
    assert resolve_elbo("auto", vjepa, 6000, rows_per_step=5999) == "inductor"  # 36 M
    assert resolve_elbo("auto", vjepa, 1000, rows_per_step=256) == "jit-meanfield"
    assert resolve_elbo("auto", vae, 6000, rows_per_step=5999) == "inductor"
    assert resolve_elbo("auto", vae, 1000, rows_per_step=256) == "meanfield"
    assert resolve_elbo("auto", vjepa, 6000, rows_per_step=None) == "jit-meanfield"  # streamed
    bayes = BJEPA(20, 4, weight_prior="normal")
    assert resolve_elbo("auto", bayes, 6000, rows_per_step=5999) == "meanfield"
    monkeypatch.setattr(svi, "_cpp_compiler", lambda: False)
    assert resolve_elbo("auto", vjepa, 6000, rows_per_step=5999) == "jit-meanfield"


@pytest.mark.parametrize("batched", [False, True])
def test_weight_gradients_are_rewritten_with_the_small_output_dimension_first(batched):
    from torch.fx.experimental.proxy_tensor import make_fx

    from bjepa.inference.inductor import _orient_weight_gradients

    def layer(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = x @ w  # forward: many rows out, left alone
        (g,) = torch.autograd.grad((y.tanh() ** 2).sum(), [w])  # the weight gradient: Xᵀ G
        return y, g

    lead = (3,) if batched else ()
    x = torch.randn(*lead, 200, 20, dtype=torch.float64)
    w = torch.randn(*lead, 20, 4, dtype=torch.float64, requires_grad=True)
    gm = make_fx(layer)(x, w)
    product = torch.ops.aten.bmm.default if batched else torch.ops.aten.mm.default

    def outputs(graph: torch.fx.GraphModule) -> list[tuple[int, ...]]:  # () for a new node
        return sorted(tuple(n.meta["val"].shape[-2:]) if "val" in n.meta else ()
                      for n in graph.graph.nodes if n.target is product)

    before = outputs(gm)
    expected = layer(x, w)
    rewritten = _orient_weight_gradients(gm)
    # the (20, 4) gradient product is now a new (4, 20) one; the (200, 4) forward stays
    assert (20, 4) in before and (200, 4) in before
    assert outputs(rewritten) == [(), (200, 4)]
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(rewritten).propagate(x, w.detach())
    assert sorted(tuple(n.meta["tensor_meta"].shape[-2:]) for n in rewritten.graph.nodes
                  if n.target is product) == [(4, 20), (200, 4)]
    for a, b in zip(rewritten(x, w.detach()), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
def test_inductor_step_on_cuda_equals_eager_training_on_cuda():
    """The compiled step on a GPU (Triton kernels): single model and a replica stack end where
    eager training on the same device ends."""
    x_c, x_t = (t.cuda() for t in _data())
    runs = {}
    for elbo in ("meanfield", "inductor"):
        torch.manual_seed(3)
        single = VJEPA(6, 3)
        torch.manual_seed(4)
        stack = [VJEPA(6, 3) for _ in range(3)]
        h = fit(single, x_c, x_t, steps=25, lr=1e-2, seed=1, elbo=elbo, warmup_steps=5,
                device="cuda", progress=False)
        fit(stack, [x_c] * 3, [x_t] * 3, steps=25, lr=1e-2, seed=[1, 2, 3], elbo=elbo,
            warmup_steps=5, device="cuda", progress=False)
        runs[elbo] = (single, stack, h)
    (a, sa, _), (b, sb, hb) = runs["meanfield"], runs["inductor"]
    assert hb.elbo == "inductor" and next(b.parameters()).is_cuda
    for x, y in [(a, b), *zip(sa, sb, strict=True)]:
        for p, q in zip(x.parameters(), y.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
