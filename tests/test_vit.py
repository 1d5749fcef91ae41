"""The ViT encoder option: shapes, argument checks, registration, and learning on digits."""

import pytest
import torch

from bjepa.models import VAE, VJEPA
from bjepa.models.encoders import DECODERS, ENCODERS, make_encoder
from bjepa.models.vit import (
    DEFAULT_VIT,
    TransformerBlock,
    VisionTransformerEncoder,
    register_vit,
    vit_factory,
)


def test_shapes_and_the_last_layer_convention():
    enc = VisionTransformerEncoder(2, 16, 24, 5, patch=4, dim=16, depth=2, heads=2,
                                   hidden_dim=32)
    assert enc.patches == 4 * 6
    x = torch.randn(7, 2 * 16 * 24)
    assert enc(x).shape == (7, 5)
    assert enc(x.reshape(7, 1, -1)).shape == (7, 1, 5)  # leading dims are kept
    last = list(enc.parameters())[-2:]  # the final linear layer's weight and bias
    assert last[0].shape == (5, 32) and last[1].shape == (5,)
    cls = VisionTransformerEncoder(1, 16, 16, 3, patch=8, dim=8, depth=1, heads=1, pool="cls")
    assert cls(torch.randn(4, 256)).shape == (4, 3) and cls.position.shape == (1, 5, 8)
    with pytest.raises(ValueError, match="last dimension 768"):
        enc(torch.randn(3, 100))


def test_attention_mixes_tokens():
    """Changing one patch changes the output read from every token (attention is global)."""
    torch.manual_seed(0)
    block = TransformerBlock(8, 2)
    x = torch.randn(1, 6, 8)
    y = x.clone()
    y[0, 0] += torch.randn(8)  # not a constant shift, which LayerNorm would remove
    diff = (block(x) - block(y)).abs().sum(-1)[0]
    assert bool((diff[1:] > 1e-6).all())


@pytest.mark.parametrize("kwargs, match", [
    (dict(patch=5), "patch"), (dict(patch=0), "patch"), (dict(dim=10, heads=4), "heads"),
    (dict(depth=0), "depth"), (dict(dim=0), "dim"), (dict(pool="max"), "pool")])
def test_validation_names_the_argument(kwargs, match):
    args = {**dict(patch=4, dim=16, depth=1, heads=2), **kwargs}
    with pytest.raises(ValueError, match=match):
        VisionTransformerEncoder(1, 16, 16, 4, **args)
    with pytest.raises(ValueError, match=match):
        register_vit(1, 16, **args)


def test_vit_is_an_encoder_choice_for_the_image_models():
    assert "vit" in ENCODERS and DECODERS["vit"] == "deconv"
    net = make_encoder("vit", 2 * 16 * 16, 4, hidden_dim=16)
    assert isinstance(net, VisionTransformerEncoder) and net.frames == 2
    assert net.patch == DEFAULT_VIT["patch"]
    name = register_vit(2, 16, patch=8, dim=8, depth=1, heads=2)
    assert name == "vit2x16x16-p8-d8-l1-h2" and DECODERS[name] == "deconv2x16x16"
    x = torch.randn(40, 512)
    for model in (VJEPA(512, 3, encoder=name, hidden_dim=16), VAE(512, 3, encoder=name)):
        assert model.encode(x).shape == (40, 3)
    with pytest.raises(ValueError, match="obs_dim"):
        vit_factory(2, 16, patch=4)(300, 4)
    with pytest.raises(ValueError, match="obs_dim"):  # not k·s² with s >= 16
        make_encoder("vit", 300, 4)


def test_vjepa_with_a_vit_learns_digit_classes():
    """VJEPA with a ViT encoder trained on digit sequences: a logistic probe of the frozen
    representation reads the current class far above chance (0.1) on unseen test images."""
    from bjepa.data.digits import make_digit_split
    from bjepa.inference import fit
    from bjepa.metrics import logistic_probe

    train, test, _ = make_digit_split(0.0, 0, train_frames=800, test_frames=300, size=16,
                                      frames_per_class=4)
    mean, scale = train.obs.mean(0), float(train.obs.std())
    xtr, xte = (train.obs - mean) / scale, (test.obs - mean) / scale
    name = register_vit(1, 16, patch=4, dim=32, depth=1, heads=2)
    torch.manual_seed(0)
    model = VJEPA(256, 16, encoder=name, hidden_dim=32)
    fit(model, xtr[:-1], xtr[1:], steps=100, lr=1e-3, batch_size=128, progress=False)
    probe = logistic_probe(model.encode(xtr), train.label, num_classes=10)
    assert probe.accuracy(model.encode(xte), test.label) > 0.35  # 0.46 measured
