"""MLP encoder options: the spec ``"mlp:depth=...,activation=..."``, its errors, its round trip
through config.json and checkpoints, and ``bjepa noisy-tv --hidden-dim/--depth/--activation``."""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from torch import nn

from bjepa.cli import main
from bjepa.experiments.noisy_tv import NoisyTVConfig, build_model
from bjepa.inference.checkpoint import load_model, save_checkpoint
from bjepa.models import VAE, VJEPA
from bjepa.models.encoders import (
    DECODERS,
    ENCODER_OPTIONS,
    ENCODERS,
    HEAD_NETS,
    make_encoder,
    make_mlp,
    mlp_spec,
    parse_encoder_spec,
    register_encoder,
)


def layout(net: nn.Module) -> list[tuple[str, int, int] | str]:
    """Each layer of a Sequential: ``(Linear, in, out)`` or the activation's class name."""
    return [("Linear", m.in_features, m.out_features) if isinstance(m, nn.Linear)
            else type(m).__name__.removeprefix("Pyro") for m in net]


def test_default_mlp_is_still_two_gelu_layers_of_64():
    net = make_encoder("mlp", 20, 4)
    assert layout(net) == [("Linear", 20, 64), "GELU", ("Linear", 64, 64), "GELU",
                           ("Linear", 64, 4)]
    assert net[-1].bias is None  # an encoder's read-out has no bias by default
    assert layout(make_mlp(20, 4)) == layout(net)


@pytest.mark.parametrize(("spec", "hidden", "expected"), [
    ("mlp:depth=1,activation=tanh", 32, [("Linear", 20, 32), "Tanh", ("Linear", 32, 4)]),
    ("mlp:activation=relu", 8, [("Linear", 20, 8), "ReLU", ("Linear", 8, 8), "ReLU",
                                ("Linear", 8, 4)]),
    ("mlp:depth=3", 16, [("Linear", 20, 16), "GELU", ("Linear", 16, 16), "GELU",
                         ("Linear", 16, 16), "GELU", ("Linear", 16, 4)]),
    ("mlp: activation = SiLU , depth = 1", 5, [("Linear", 20, 5), "SiLU", ("Linear", 5, 4)]),
    ("mlp:activation=elu,depth=1", 6, [("Linear", 20, 6), "ELU", ("Linear", 6, 4)]),
])
def test_spec_builds_the_named_network(spec, hidden, expected):
    assert layout(make_encoder(spec, 20, 4, hidden_dim=hidden)) == expected


def test_mlp_spec_writes_one_canonical_form():
    assert mlp_spec() == "mlp"
    assert mlp_spec(1, "tanh") == "mlp:depth=1,activation=tanh"
    assert mlp_spec(activation="Tanh") == "mlp:activation=tanh"
    assert parse_encoder_spec(mlp_spec(2, "relu")) == ("mlp", {"depth": 2, "activation": "relu"})
    assert parse_encoder_spec("linear") == ("linear", {})


def test_decoders_and_heads_of_a_spec_are_the_same_mlp():
    spec = "mlp:depth=1,activation=tanh"
    assert DECODERS[spec] == spec and HEAD_NETS[spec] == spec
    assert HEAD_NETS["mlp"] == "mlp" and DECODERS["linear"] == "linear"
    for unknown in ("nosuchfamily", "nosuchfamily:depth=1"):
        with pytest.raises(KeyError):
            HEAD_NETS[unknown]
    with pytest.raises(ValueError, match="no option 'width'"):
        DECODERS["mlp:width=3"]
    m = VJEPA(20, 4, encoder=spec, hidden_dim=32)
    for net in (m.context_encoder, m.target_scale_net, m.predictor.net):
        assert [x for x in layout(net) if isinstance(x, str)] == ["Tanh"]
    assert layout(VAE(20, 4, encoder=spec, hidden_dim=32).decoder) == [
        ("Linear", 4, 32), "Tanh", ("Linear", 32, 20)]


def test_options_of_another_family_do_not_leak_into_its_heads():
    register_encoder("test-optfam", lambda i, o, *, hidden_dim=64, bias=False, k=1:
                     nn.Sequential(*[nn.Linear(i, o, bias=bias)] * k), options={"k": int})
    try:
        assert HEAD_NETS["test-optfam:k=3"] == "mlp"  # its heads are plain MLPs
        assert DECODERS["test-optfam:k=3"] == "test-optfam:k=3"
        assert len(make_encoder("test-optfam:k=3", 20, 4)) == 3
    finally:
        for table in (ENCODERS, DECODERS, HEAD_NETS, ENCODER_OPTIONS):
            table.pop("test-optfam", None)


@pytest.mark.parametrize(("spec", "message"), [
    ("mlp:depth=0", r"depth must be a whole number of hidden layers >= 1, got '0'.*'linear'"),
    ("mlp:depth=1.5", r"depth must be a whole number.*got '1.5'"),
    ("mlp:depth=two", r"depth must be a whole number.*got 'two'"),
    ("mlp:activation=sigmoid", r"unknown activation 'sigmoid'; choose one of 'gelu', 'tanh'"),
    ("mlp:width=32", r"the 'mlp' family has no option 'width'; it takes 'depth', 'activation'"),
    ("mlp:depth", r"options are written key=value.*'mlp:depth=...,activation=...'"),
    ("mlp:", r"options are written key=value"),
    ("mlp:depth=1,depth=2", r"option 'depth' is given twice"),
    ("linear:depth=1", r"the 'linear' family takes no options; use encoder='linear'"),
    ("mpl", r"unknown encoder 'mpl'; choose one of 'linear', 'mlp'"),
])
def test_bad_specs_name_the_option_and_the_fix(spec, message):
    with pytest.raises(ValueError, match=message):
        make_encoder(spec, 20, 4)
    with pytest.raises(ValueError, match=message):
        NoisyTVConfig(encoder=spec).validate()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="encoder must be a string"):
        make_encoder(3, 20, 4)
    with pytest.raises(ValueError, match="hidden_dim"):
        make_encoder("mlp:depth=1", 20, 4, hidden_dim=0)
    with pytest.raises(ValueError, match="depth"):
        make_mlp(20, 4, depth=0)
    with pytest.raises(ValueError, match="unknown activation 'softmax'"):
        make_mlp(20, 4, activation="softmax")
    with pytest.raises(ValueError, match="depth must be a whole number"):
        mlp_spec(depth=-1)
    with pytest.raises(ValueError, match="encoder name must be .* without ':'"):
        register_encoder("my:mlp", make_mlp)
    with pytest.raises(ValueError, match="hidden_dim sets the width of MLP networks.*'linear'"):
        NoisyTVConfig(encoder="linear", hidden_dim=32).validate()
    with pytest.raises(ValueError, match="hidden_dim"):
        NoisyTVConfig(encoder="mlp", hidden_dim=-3).validate()


def test_config_json_round_trip_rebuilds_the_network(tmp_path):
    cfg = NoisyTVConfig(encoder=mlp_spec(1, "tanh"), hidden_dim=32, models=["vjepa"])
    (tmp_path / "config.json").write_text(json.dumps(asdict(cfg)))
    again = NoisyTVConfig(**json.loads((tmp_path / "config.json").read_text())).validate()
    assert again == cfg
    net = build_model("vjepa", 20, again).context_encoder
    assert layout(net) == [("Linear", 20, 32), "Tanh", ("Linear", 32, 4)]
    # a config.json written before the option existed still reads as the 2 x 64 GELU MLP
    old = {k: v for k, v in asdict(NoisyTVConfig(encoder="mlp")).items() if k != "hidden_dim"}
    assert layout(build_model("vjepa", 20, NoisyTVConfig(**old)).context_encoder)[:2] == [
        ("Linear", 20, 64), "GELU"]


def test_checkpoint_rebuilds_the_same_network_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = VJEPA(20, 4, encoder="mlp:depth=1,activation=tanh", hidden_dim=32)
    path = save_checkpoint(tmp_path / "m.pt", model)
    x = torch.randn(7, 20, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        "from bjepa.inference.checkpoint import load_model\n"
        "m = load_model(sys.argv[1])\n"
        "print(m.hparams['encoder'], m.hparams['hidden_dim'])\n"
        "print([type(x).__name__ for x in m.context_encoder])\n"
        "torch.save(m.encode(torch.load(sys.argv[2])), sys.argv[3])\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.pt"),
                          str(tmp_path / "z.pt")], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.splitlines()
    assert out == ["mlp:depth=1,activation=tanh 32", "['PyroLinear', 'PyroTanh', 'PyroLinear']"]
    torch.testing.assert_close(torch.load(tmp_path / "z.pt"), model.encode(x), rtol=0, atol=0)
    loaded = load_model(path)
    assert layout(loaded.predictor.net) == [("Linear", 4, 32), "Tanh", ("Linear", 32, 8)]


def test_cli_tiny_run_stores_and_rebuilds_the_chosen_mlp(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["noisy-tv", "--quick", "--models", "vjepa", "--sigmas", "4", "--seeds", "0",
               "--steps", "20", "--encoder", "mlp", "--hidden-dim", "16", "--depth", "1",
               "--activation", "tanh", "--out", str(out), "--no-progress"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"] == "mlp:depth=1,activation=tanh" and cfg["hidden_dim"] == 16
    model = load_model(out / "checkpoints" / "vjepa-sigma4-seed0.pt")
    assert layout(model.context_encoder) == [("Linear", 20, 16), "Tanh", ("Linear", 16, 4)]
    assert "vjepa" in capsys.readouterr().out


def test_cli_accepts_the_spec_directly(tmp_path):
    out = tmp_path / "run"
    rc = main(["noisy-tv", "--quick", "--models", "vae", "--sigmas", "0", "--seeds", "0",
               "--steps", "5", "--encoder", "mlp:depth=1,activation=relu", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    model = load_model(out / "checkpoints" / "vae-sigma0-seed0.pt")
    assert layout(model.decoder) == [("Linear", 4, 64), "ReLU", ("Linear", 64, 20)]


@pytest.mark.parametrize(("argv", "message"), [
    (["--depth", "1"], "--depth and --activation shape the MLP networks; add --encoder mlp"),
    (["--encoder", "linear", "--activation", "tanh"], "add --encoder mlp"),
    (["--encoder", "mlp:depth=1", "--activation", "tanh"], "give them either there or as"),
    (["--encoder", "mlp", "--depth", "0"], "depth must be a whole number of hidden layers"),
    (["--encoder", "mlp", "--activation", "swish"], "unknown activation 'swish'"),
    (["--encoder", "linear", "--hidden-dim", "8"], "hidden_dim sets the width of MLP"),
    (["--encoder", "mlp:depth=x"], "encoder 'mlp:depth=x': depth must be"),
])
def test_cli_rejects_bad_mlp_options_before_writing_anything(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["noisy-tv", "--quick", "--out", str(out), "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_init_defaults_to_each_models_own_start_and_reaches_the_predictive_models():
    own = NoisyTVConfig(encoder="mlp").validate()
    assert (build_model("vjepa", 20, own).init, build_model("jepa", 20, own).init) == (
        "cca", "random")
    chosen = NoisyTVConfig(encoder="mlp", init="random").validate()
    for name in ("vjepa", "bjepa", "jepa"):
        assert build_model(name, 20, chosen).init == "random", name
    assert build_model("vjepa", 20, NoisyTVConfig(init="cca").validate()).init == "cca"
    with pytest.raises(ValueError, match="init"):
        NoisyTVConfig(init="zeros").validate()


def test_cli_init_is_stored_and_rebuilt_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    rc = main(["noisy-tv", "--quick", "--models", "vjepa", "--sigmas", "0", "--seeds", "0",
               "--steps", "5", "--encoder", "mlp", "--hidden-dim", "16", "--init", "random",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["init"] == "random"
    assert load_model(out / "checkpoints" / "vjepa-sigma0-seed0.pt").init == "random"
