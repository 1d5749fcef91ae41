"""EMA, gradients, seeding, fit behaviour."""

import json

import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from bjepa.inference import cosine_tau, fit, make_tau_schedule
from bjepa.inference.ema import EMATarget
from bjepa.models import JEPA, VAE, VJEPA, AutoRegressive


def test_ema_update_exact_and_gradient_free():
    src = torch.nn.Linear(3, 2)
    ema = EMATarget(src)
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    ema.update(src, 0.9)
    for b, t, s in zip(before, ema.module.parameters(), src.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
        assert not t.requires_grad


def test_ema_target_not_trainable():
    m = VJEPA(5, 2)
    trainable = {id(p) for p in m.parameters()}
    assert all(id(p) not in trainable for p in m.target_encoder.parameters())
    assert not any(k.startswith("_ema") for k, _ in m.named_parameters())


def test_target_variance_gets_gradient_and_mean_does_not():
    m = VJEPA(5, 2, init="random")
    with torch.no_grad():  # the online encoder and its EMA copy differ, as after training
        for p in m.context_encoder.parameters():
            p.add_(0.3)
    xc, xt = torch.randn(7, 5), torch.randn(7, 5)
    q = m.target_dist(xt)
    # the mean is the EMA encoder's output, cut from the graph (stop-gradient) ...
    assert not q.mean.requires_grad
    torch.testing.assert_close(q.mean, m.target_encoder(xt), rtol=0, atol=0)
    # ... while the scale is a function of trainable parameters
    assert q.stddev.requires_grad
    loss = TraceMeanField_ELBO().differentiable_loss(m.model, m.guide, xc, xt)
    loss.backward()
    assert m.target_scale_net.bias.grad is not None
    assert m.target_scale_net.bias.grad.abs().sum() > 0
    # the KL term, β/2 Σ μ², would give the encoder a gradient through a non-detached mean
    m.zero_grad()
    kl = torch.distributions.kl_divergence(q, m.prior_dist(q.mean)).sum()
    assert not kl.requires_grad or all(
        g is None for g in torch.autograd.grad(kl, list(m.context_encoder.parameters()),
                                               allow_unused=True))


def test_tau_schedules():
    assert make_tau_schedule(0.5)(3, 10) == 0.5
    s = make_tau_schedule("cosine")
    assert s(0, 100) == pytest.approx(0.99) and s(99, 100) == pytest.approx(1.0)
    assert isinstance(s, cosine_tau)
    with pytest.raises(ValueError, match="tau"):
        make_tau_schedule(1.5)


def test_fit_is_seeded(small_split):
    tr, _ = small_split
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        m = VJEPA(20, 4)
        h = fit(m, tr.obs[:-1], tr.obs[1:], steps=30, seed=3, progress=False)
        out.append((h.loss, m.context_encoder.weight.detach().clone()))
    assert out[0][0] == out[1][0]
    torch.testing.assert_close(out[0][1], out[1][1], rtol=0, atol=0)


@pytest.mark.parametrize("cls", [VJEPA, JEPA, VAE, AutoRegressive])
def test_every_model_trains_and_loss_drops(cls, small_split, tmp_path):
    tr, _ = small_split
    m = cls(20, 4)
    path = tmp_path / "m.jsonl"
    h = fit(m, tr.obs[:-1], tr.obs[1:], steps=200, lr=1e-2, batch_size=128, progress=False,
            metrics_path=path, metrics_tags={"model": cls.__name__})
    assert h.loss[-1] < h.loss[0]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 200 and lines[0]["model"] == cls.__name__
    z = m.encode(tr.obs)
    assert z.shape == (len(tr), 4) and not z.requires_grad


def test_predict_shapes():
    for head in ["diag", "full"]:
        m = VJEPA(6, 3, head=head)
        d = m.predict(torch.randn(9, 6))
        assert d.batch_shape == (9,) and d.event_shape == (3,)


def test_callback_stops_early(small_split):
    tr, _ = small_split
    h = fit(VJEPA(20, 4), tr.obs[:-1], tr.obs[1:], steps=100, progress=False,
            callback=lambda step, rec: step >= 9)
    assert h.stopped_early and len(h.records) == 10


def test_separate_models_do_not_share_parameters(small_split):
    tr, _ = small_split
    a, b = VJEPA(20, 4), VJEPA(20, 4)
    wb = b.context_encoder.weight.detach().clone()
    fit(a, tr.obs[:-1], tr.obs[1:], steps=20, progress=False)
    torch.testing.assert_close(b.context_encoder.weight.detach(), wb)


@pytest.mark.parametrize("cls", [VJEPA, JEPA, VAE, AutoRegressive])
def test_checkpoint_round_trip(cls, small_split, tmp_path):
    from bjepa.inference.checkpoint import load_model, save_checkpoint

    tr, _ = small_split
    m = cls(20, 4)
    fit(m, tr.obs[:-1], tr.obs[1:], steps=20, progress=False)
    path = save_checkpoint(tmp_path / "c.pt", m, meta={"note": "x"})
    m2 = load_model(path)
    assert type(m2) is cls
    torch.testing.assert_close(m2.encode(tr.obs), m.encode(tr.obs), rtol=0, atol=0)
    if m.target_encoder is not None:
        for a, b in zip(m.target_encoder.parameters(), m2.target_encoder.parameters(),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_malicious_checkpoint_refused(tmp_path):
    import pickle

    from bjepa.inference.checkpoint import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"

    class Evil:  # the payload writes to an absolute path inside tmp_path, where we look
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(marker)!r}).write_text('x')",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="not a safe"):
        load_checkpoint(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the payload is live: plain unpickling runs it
    assert marker.exists()
