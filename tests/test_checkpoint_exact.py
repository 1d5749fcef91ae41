"""Exact checks of checkpoint integrity (``bjepa.inference.checkpoint``): plain values round
trip with their types, old and unknown versions, the checksum, RNG states (CUDA states on a
machine without CUDA), the folder manager's ordering and pruning; written to kill mutants the
behavioural tests let through (``make mutate``)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from bjepa.inference.checkpoint import (
    CheckpointError,
    CheckpointManager,
    TrainingState,
    capture_rng_state,
    load_checkpoint,
    load_model,
    restore_model_state,
    restore_rng_state,
    save_checkpoint,
)
from bjepa.models import VJEPA


def test_plain_values_round_trip_with_their_types(tmp_path):
    meta = {"t": (1, 2.5, "x"), "l": [1, [2, (3,)]], "np": np.float64(0.25), "i": np.int64(7),
            "b": True, "n": None, 3: "int key", "nested": {"a": {"b": (None, False)}},
            "tensor": torch.arange(3)}
    path = save_checkpoint(tmp_path / "c.pt", VJEPA(4, 2), meta=meta)
    got = load_checkpoint(path)["meta"]
    assert got["t"] == (1, 2.5, "x") and type(got["t"]) is tuple
    assert got["l"] == [1, [2, (3,)]] and type(got["l"]) is list and type(got["l"][1][1]) is tuple
    assert got["np"] == 0.25 and type(got["np"]) is float
    assert got["i"] == 7 and type(got["i"]) is int
    assert got["b"] is True and got["n"] is None and got[3] == "int key"
    assert got["nested"] == {"a": {"b": (None, False)}}
    assert torch.equal(got["tensor"], torch.arange(3))
    with pytest.raises(TypeError, match=r"meta has a key 1\.5 of type float"):
        save_checkpoint(tmp_path / "d.pt", VJEPA(4, 2), meta={1.5: "x"})
    with pytest.raises(TypeError, match=r"meta\['x'\]\[1\] holds a object"):
        save_checkpoint(tmp_path / "e.pt", VJEPA(4, 2), meta={"x": [1, object()]})
    assert not (tmp_path / "d.pt").exists() and not (tmp_path / "e.pt").exists()


def _payload(path):
    return torch.load(path, weights_only=True)


def test_versions_and_format_are_checked(tmp_path):
    m = VJEPA(4, 2)
    path = save_checkpoint(tmp_path / "c.pt", m)
    payload = _payload(path)
    assert payload["version"] == 2 and payload["digest"].startswith("sha256:")
    # version 1: no checksum, still readable
    v1 = {k: v for k, v in payload.items() if k != "digest"}
    v1["version"] = 1
    torch.save(v1, tmp_path / "v1.pt")
    assert load_checkpoint(tmp_path / "v1.pt")["version"] == 1
    torch.testing.assert_close(load_model(tmp_path / "v1.pt").encode(torch.ones(2, 4)),
                               m.encode(torch.ones(2, 4)))
    for bad in (0, 3, "2", None):
        torch.save({**v1, "version": bad}, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="reads versions"):
            load_checkpoint(tmp_path / "bad.pt")
    torch.save({**v1, "format": "other"}, tmp_path / "fmt.pt")
    with pytest.raises(CheckpointError, match="missing format marker"):
        load_checkpoint(tmp_path / "fmt.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="missing format marker"):
        load_checkpoint(tmp_path / "list.pt")
    for key in ("model_class", "hparams", "state_dict", "meta"):
        torch.save({**v1, key: 5}, tmp_path / "mal.pt")
        with pytest.raises(CheckpointError, match=f"malformed: '{key}'"):
            load_checkpoint(tmp_path / "mal.pt")
    # version 2: any change to the contents breaks the checksum
    torch.save({**payload, "meta": {"x": 1}}, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint file


def test_model_class_and_settings_must_match(tmp_path):
    from bjepa.models import JEPA

    path = save_checkpoint(tmp_path / "c.pt", VJEPA(4, 2, beta=0.5))
    assert load_checkpoint(path, model_class="VJEPA")["model_class"] == "VJEPA"
    assert load_checkpoint(path, model_class=VJEPA)["model_class"] == "VJEPA"
    with pytest.raises(CheckpointError, match="holds a VJEPA model, not a JEPA"):
        load_checkpoint(path, model_class=JEPA)
    payload = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"beta=0\.5 \(model has 0\.01\)"):
        restore_model_state(payload, VJEPA(4, 2))
    with pytest.raises(CheckpointError, match="not a JEPA"):
        restore_model_state(payload, JEPA(4, 2))
    fresh = VJEPA(4, 2, beta=0.5)  # another instance: another Pyro scope, renamed on load
    restore_model_state(payload, fresh)
    x = torch.randn(3, 4)
    torch.testing.assert_close(fresh.encode(x), load_model(path).encode(x), rtol=0, atol=0)
    unknown = {**_payload(path), "version": 1, "model_class": "Transformer"}
    unknown.pop("digest")
    torch.save(unknown, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match="unknown model class 'Transformer'"):
        load_model(tmp_path / "u.pt")
    refused = {**unknown, "model_class": "VJEPA", "hparams": {"obs_dim": -1}}
    torch.save(refused, tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match="constructor arguments"):
        load_model(tmp_path / "r.pt")


def test_a_custom_tau_schedule_loads_as_a_constant(tmp_path):
    m = VJEPA(4, 2, tau=lambda step, total: 0.5)
    assert m.hparams["tau"] == "custom"
    loaded = load_model(save_checkpoint(tmp_path / "c.pt", m))
    assert loaded.tau_schedule(0, 10) == 1.0


def test_rng_states_restore_and_refuse_malformed_ones(caplog):
    state = capture_rng_state()
    assert state["cuda"] == [] or torch.cuda.is_available()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    with caplog.at_level(logging.WARNING, logger="bjepa.inference.checkpoint"):
        if not torch.cuda.is_available():  # a checkpoint from a CUDA machine, read here
            restore_rng_state({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)]})
            assert any("CUDA randomness is not restored" in r.message for r in caplog.records)
        else:  # pragma: no cover - CUDA machines
            restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    for broken in ({k: v for k, v in state.items() if k != "numpy"},
                   {**state, "torch": "not a tensor"},
                   {**state, "python": {**state["python"], "internal": torch.zeros(3)}}):
        with pytest.raises(CheckpointError, match="RNG state is malformed"):
            restore_rng_state(broken)


def _state(step):
    return TrainingState(step=step, optimizer={}, rng=capture_rng_state(), config={},
                         history={})


def test_checkpoint_manager_orders_prunes_and_cleans(tmp_path):
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="keep_last"):
            CheckpointManager(tmp_path / "bad", keep_last=bad)
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / ".step-000000003.pt.abc.tmp").write_bytes(b"torn")
    (folder / "step-12.pt").write_bytes(b"not ours: too few digits")
    (folder / "notes.txt").write_text("x")
    m = VJEPA(4, 2)
    with CheckpointManager(folder, keep_last=2) as mgr:
        assert not list(folder.glob(".step-*.tmp"))  # a killed writer's leftovers go
        assert mgr.latest() is None and mgr.paths() == []
        assert mgr.path_for(7).name == "step-000000007.pt"
        for step in (9, 10, 100):
            mgr.save(m, _state(step))
        assert [p.name for p in mgr.paths()] == ["step-000000010.pt", "step-000000100.pt"]
        assert mgr.latest().name == "step-000000100.pt"
        assert load_checkpoint(mgr.latest())["training"]["step"] == 100
    assert (folder / "step-12.pt").exists() and (folder / "notes.txt").exists()
    with CheckpointManager(folder, keep_last=1) as mgr:
        mgr.save(m, _state(1000))
        assert [p.name for p in mgr.paths()] == ["step-000001000.pt"]


def test_refused_pickles_say_why(tmp_path):
    import pickle

    from bjepa.inference import checkpoint

    path = tmp_path / "set.pt"
    path.write_bytes(pickle.dumps({1, 2}))  # no code, but an object weights-only refuses
    with pytest.raises(CheckpointError, match=r"refuses \(Weights only load failed"):
        load_checkpoint(path)
    assert checkpoint._starts_with_pickle(path)
    assert not checkpoint._starts_with_pickle(save_checkpoint(tmp_path / "c.pt", VJEPA(4, 2)))
    assert not checkpoint._starts_with_pickle(tmp_path / "missing.pt")


def test_loading_into_a_model_with_other_prior_arguments_warns(tmp_path, caplog):
    from bjepa.models import BJEPA
    from bjepa.priors import GaussianPrior

    saved = BJEPA(4, 2, prior=GaussianPrior(2, scale=2.0, learnable=True))
    payload = load_checkpoint(save_checkpoint(tmp_path / "c.pt", saved))
    with caplog.at_level(logging.WARNING, logger="bjepa.inference.checkpoint"):
        restore_model_state(payload, BJEPA(4, 2, prior=GaussianPrior(2, scale=2.0,
                                                                     learnable=True)))
    assert not caplog.records
    other = BJEPA(4, 2, prior=GaussianPrior(2, scale=3.0, learnable=True))
    with caplog.at_level(logging.WARNING, logger="bjepa.inference.checkpoint"):
        restore_model_state(payload, other)
    assert any("built with other arguments" in r.message for r in caplog.records)
    # the saved state wins: the learned scale is the checkpoint's
    torch.testing.assert_close(other.struct_prior.scale, saved.struct_prior.scale)


def test_the_checksum_covers_every_element_of_lists_and_tuples(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", VJEPA(4, 2), meta={"l": [1, 2], "t": (0.5, "a")})
    payload = _payload(path)
    for meta in ({"l": [1, 3], "t": (0.5, "a")}, {"l": [1, 2], "t": (0.5, "b")},
                 {"l": [2, 1], "t": (0.5, "a")}):
        torch.save({**payload, "meta": meta}, tmp_path / "t.pt")
        with pytest.raises(CheckpointError, match="checksum"):
            load_checkpoint(tmp_path / "t.pt")


def test_load_model_argument_forms(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", VJEPA(4, 2))
    assert isinstance(load_model(path=path, map_location="cpu"), VJEPA)  # by keyword
    assert isinstance(load_model(path, "cpu", model_class="VJEPA"), VJEPA)
    with pytest.raises(TypeError):
        load_model(path, "cpu", "VJEPA")  # model_class is keyword-only
