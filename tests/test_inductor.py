"""elbo="inductor": the mean-field ELBO's loss and gradients as one TorchInductor graph."""

from __future__ import annotations

import shutil

import pytest
import torch

from bjepa.inference import fit
from bjepa.models import JEPA, VAE, VJEPA

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
        fit(VAE(6, 3), x_c, None, steps=2, elbo="inductor", progress=False)
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
