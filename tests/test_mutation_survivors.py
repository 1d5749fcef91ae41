"""Tests for the mutants a full `make mutate` run of bjepa/metrics.py and
inference/checkpoint.py left alive (docs/testing.md lists them): each pins one behaviour."""

import pytest
import torch

from bjepa.inference.checkpoint import load_checkpoint, save_checkpoint
from bjepa.metrics import canonical_directions, linear_probe_r2, logistic_probe, r2_score
from bjepa.models import VJEPA


def test_r2_treats_a_column_constant_to_one_part_in_a_million_as_constant():
    """R² of a column whose spread is 1e-7 of its size is undefined (NaN), not noise fitting:
    the threshold is relative to the column's squared scale."""
    g = torch.Generator().manual_seed(0)
    y = 1000.0 + 1e-4 * torch.randn(200, 1, generator=g, dtype=torch.float64)
    assert torch.isnan(r2_score(y, y + 1e-5)).all()
    y2 = 1000.0 + 1e-1 * torch.randn(200, 1, generator=g, dtype=torch.float64)
    assert torch.isfinite(r2_score(y2, y2 + 1e-3)).all()


def test_linear_probe_refuses_as_many_rows_as_columns():
    z, y = torch.randn(4, 4), torch.randn(4, 1)
    with pytest.raises(ValueError, match="more rows than columns"):
        linear_probe_r2(z, y, z, y)
    z5, y5 = torch.randn(5, 4), torch.randn(5, 1)
    assert torch.isfinite(torch.as_tensor(linear_probe_r2(z5, y5, z5, y5))).all()


def test_canonical_directions_ignore_constant_offsets_of_either_side():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(500, 2, generator=g, dtype=torch.float64)
    a = torch.cat([s, torch.randn(500, 3, generator=g, dtype=torch.float64)], 1)
    b = torch.cat([s @ torch.randn(2, 2, generator=g, dtype=torch.float64),
                   torch.randn(500, 3, generator=g, dtype=torch.float64)], 1)
    w, rho = canonical_directions(a, b, 2)
    for da, db in ((7.0, 0.0), (0.0, -9.0)):
        w2, rho2 = canonical_directions(a + da, b + db, 2)
        torch.testing.assert_close(rho2, rho)
        torch.testing.assert_close(w2.abs(), w.abs())


def test_logistic_probe_allows_no_penalty_and_refuses_a_negative_one():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(60, 2, generator=g)
    y = (z[:, 0] > 0).long()
    assert logistic_probe(z, y, l2=0.0, max_iter=50).accuracy(z, y) > 0.9
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        logistic_probe(z, y, l2=-1e-3)


def test_checkpoints_can_be_saved_into_folders_that_do_not_exist_yet(tmp_path):
    m = VJEPA(6, 2)
    path = tmp_path / "a" / "b" / "c" / "model.pt"
    save_checkpoint(path, m)
    assert load_checkpoint(path)["model_class"] == "VJEPA"


def test_a_checkpoint_that_does_not_fit_names_what_torch_found(tmp_path):
    from bjepa.inference.checkpoint import CheckpointError, restore_model_state

    save_checkpoint(tmp_path / "m.pt", VJEPA(6, 2))
    payload = load_checkpoint(tmp_path / "m.pt")
    payload["state_dict"].pop(next(iter(payload["state_dict"])))  # a key the model needs
    with pytest.raises(CheckpointError, match=r"does not fit this VJEPA: Error\(s\) in loading"):
        restore_model_state(payload, VJEPA(6, 2), tmp_path / "m.pt")


def test_newest_checkpoint_prefers_model_pt_when_two_files_are_equally_new(tmp_path):
    import os

    from bjepa.inference.checkpoint import find_latest_checkpoint

    (tmp_path / "checkpoints").mkdir()
    a, b = tmp_path / "model.pt", tmp_path / "checkpoints" / "step-000000010.pt"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    os.utime(a, ns=(10**18, 10**18))
    os.utime(b, ns=(10**18, 10**18))
    assert find_latest_checkpoint(tmp_path) == a
    os.utime(b, ns=(10**18 + 1, 10**18 + 1))
    assert find_latest_checkpoint(tmp_path) == b
