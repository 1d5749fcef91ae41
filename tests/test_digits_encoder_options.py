"""``bjepa digits`` encoder options: the encoder spec, MLP width/depth/activation and the encoder
start (``--init``) reach every frame model, are stored in config.json and checkpoints, and bad
values are refused before a run folder is written."""

import json

import pytest
from torch import nn

from bjepa.cli import main
from bjepa.experiments.digits import DigitsConfig, build
from bjepa.inference.checkpoint import load_model


def layout(net: nn.Module) -> list[tuple[str, int, int] | str]:
    """Each layer of a Sequential: ``(Linear, in, out)`` or the activation's class name."""
    return [("Linear", m.in_features, m.out_features) if isinstance(m, nn.Linear)
            else type(m).__name__.removeprefix("Pyro") for m in net]


def test_default_config_keeps_two_gelu_layers_of_256_and_starts_every_encoder_at_random():
    # random, not VJEPA's/BJEPA's own CCA start, which picks spurious directions on the 64
    # pixels (docs/digits.md, "VJEPA's encoder start")
    cfg = DigitsConfig().validate()
    vjepa, bjepa, jepa = (build(name, 64, cfg) for name in ("vjepa", "bjepa", "jepa"))
    assert layout(vjepa.context_encoder) == [("Linear", 64, 256), "GELU", ("Linear", 256, 256),
                                             "GELU", ("Linear", 256, 16)]
    assert (vjepa.init, bjepa.init, jepa.init) == ("random", "random", "random")
    assert DigitsConfig.quick().init == "random"


def test_cca_start_stays_available_and_none_means_each_models_own_start():
    assert build("bjepa", 64, DigitsConfig(init="cca").validate()).init == "cca"
    own = DigitsConfig(init=None).validate()
    assert (build("vjepa", 64, own).init, build("jepa", 64, own).init) == ("cca", "random")


def test_encoder_spec_width_and_start_reach_the_frame_models():
    cfg = DigitsConfig(encoder="mlp:depth=1,activation=tanh", hidden_dim=32,
                       init="random").validate()
    for name in ("vjepa", "bjepa", "jepa"):
        model = build(name, 64, cfg)
        assert layout(model.context_encoder) == [("Linear", 64, 32), "Tanh", ("Linear", 32, 16)]
        assert model.init == "random", name
    vae = build("vae", 64, cfg)
    assert "Tanh" in layout(vae.decoder) and ("Linear", 64, 32) not in layout(vae.decoder)
    assert build("vjepa", 64, DigitsConfig(init="cca")).init == "cca"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"encoder": "mlp:depth=0"}, "depth must be a whole number"),
    ({"encoder": "mlp:activation=swish"}, "unknown activation 'swish'"),
    ({"encoder": "cnn"}, "encoder"),
    ({"init": "zeros"}, "init"),
])
def test_config_refuses_bad_encoder_options(overrides, message):
    with pytest.raises(ValueError, match=message):
        DigitsConfig(**overrides).validate()


def test_cli_tiny_run_stores_and_rebuilds_the_chosen_network_and_start(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["digits", "--quick", "--models", "vjepa", "--sigmas", "0", "--seeds", "0",
               "--steps", "5", "--hidden-dim", "16", "--depth", "1", "--activation", "tanh",
               "--init", "cca", "--out", str(out)])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["encoder"], cfg["hidden_dim"], cfg["init"]) == (
        "mlp:depth=1,activation=tanh", 16, "cca")
    model = load_model(out / "checkpoints" / "vjepa-sigma0-seed0.pt")
    assert layout(model.context_encoder) == [("Linear", 64, 16), "Tanh", ("Linear", 16, 16)]
    assert model.init == "cca"
    assert "encoder mlp:depth=1,activation=tanh of width 16, init cca" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--encoder", "linear", "--depth", "1"], "add --encoder mlp"),
    (["--encoder", "mlp:depth=1", "--activation", "tanh"], "give them either there or as"),
    (["--activation", "swish"], "unknown activation 'swish'"),
    (["--encoder", "mlp:width=3"], "has no option 'width'"),
])
def test_cli_refuses_bad_encoder_options_before_writing_anything(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["digits", "--quick", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
