"""Bad input gets a clear error that names the argument."""

import pytest
import torch

from bjepa.data import noisy_tv
from bjepa.inference import fit
from bjepa.metrics import linear_probe_r2
from bjepa.models import VAE, VJEPA


@pytest.fixture
def xy():
    x = torch.randn(50, 6)
    return x[:-1], x[1:]


def test_obs_dim_mismatch(xy):
    with pytest.raises(ValueError, match="context.*obs_dim"):
        fit(VJEPA(5, 2), *xy, steps=1, progress=False)


def test_nan_in_data(xy):
    c, t = xy[0].clone(), xy[1]
    c[3, 2] = float("nan")
    with pytest.raises(ValueError, match="context contains 1 NaN"):
        fit(VJEPA(6, 2), c, t, steps=1, progress=False)


def test_wrong_shapes(xy):
    with pytest.raises(ValueError, match="context must have 2 dimensions"):
        fit(VJEPA(6, 2), xy[0][None], xy[1], steps=1, progress=False)
    with pytest.raises(ValueError, match="same number of rows"):
        fit(VJEPA(6, 2), xy[0], xy[1][:-1], steps=1, progress=False)
    with pytest.raises(TypeError, match="floating-point"):
        fit(VJEPA(6, 2), xy[0].long(), xy[1], steps=1, progress=False)


def test_missing_target(xy):
    with pytest.raises(ValueError, match="needs a target"):
        fit(VJEPA(6, 2), xy[0], None, steps=1, progress=False)
    fit(VAE(6, 2), xy[0], None, steps=2, progress=False)  # VAE does not need one


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "steps"), (dict(steps=-3), "steps"), (dict(lr=0.0), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(elbo="magic"), "elbo"), (dict(batch_size=0), "batch"),
])
def test_bad_fit_args(xy, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fit(VJEPA(6, 2), *xy, progress=False, **{"steps": 1, **kw})


@pytest.mark.parametrize("kw,match", [
    (dict(encoder="transformer"), "encoder"), (dict(head="cauchy"), "head"),
    (dict(beta=-0.1), "beta"), (dict(tau=1.2), "tau"), (dict(tau=-0.1), "tau"),
    (dict(init="zeros"), "init"), (dict(latent_dim=0), "latent_dim"),
])
def test_bad_model_args(kw, match):
    with pytest.raises(ValueError, match=match):
        VJEPA(**{"obs_dim": 6, **kw})


def test_bad_data_args():
    with pytest.raises(ValueError, match="sigma"):
        noisy_tv.make_split(sigma=-1.0)
    with pytest.raises(ValueError, match="train_steps"):
        noisy_tv.make_split(train_steps=0)


def test_probe_errors():
    z, y = torch.randn(10, 2), torch.randn(10, 1)
    with pytest.raises(ValueError, match="same rows"):
        linear_probe_r2(z, y[:5], z, y)
    with pytest.raises(ValueError, match="y_test contains"):
        linear_probe_r2(z, y, z, y * float("inf"))
