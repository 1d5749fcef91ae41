"""``bjepa train --data PATH``, ``bjepa diagnose``, ``bjepa encode`` and ``bjepa predict`` on your
own files; bad input gets one line naming the file/column/row and leaves no run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bjepa.cli import main

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Two episodes of a noisy 3-D linear system with large offsets, as a CSV."""
    rng = np.random.default_rng(0)
    frames = []
    for unit in ("a", "b"):
        x = np.zeros((120, 3))
        for t in range(1, 120):
            x[t] = 0.9 * x[t - 1] + rng.normal(size=3)
        df = pd.DataFrame(x * [1.0, 50.0, 0.1] + [1e4, -200, 3], columns=["p", "q", "r"])
        df["t"] = np.arange(120)[::-1]  # stored newest first: sorting by time must fix it
        df["unit"] = unit
        frames.append(df)
    path = tmp_path_factory.mktemp("data") / "plant.csv"
    pd.concat(frames).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def run(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "plant"
    rc = main(["train", "--data", str(table), "--columns", "p,q,r", "--time-col", "t",
               "--episode-col", "unit", "--context-frames", "2", "--split", "time",
               "--val-frac", "0.2", "--test-frac", "0.1", "--steps", "60", "--no-progress",
               "--out", str(out)])
    assert rc == 0
    return out


def test_train_writes_the_usual_run_folder(run):
    for name in ("config.json", "metrics.jsonl", "model.pt", "results.json",
                 "figures/loss.png", "figures/latents.png"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("step-*.pt"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["context_frames"] == 2 and cfg["load"]["columns"] == ["p", "q", "r"]
    assert cfg["pairs"]["val"] > 0 and cfg["episodes"] == 2
    res = json.loads((run / "results.json").read_text())
    assert res["val_loss"] is not None and np.isfinite(res["final_loss"])


def test_load_model_of_a_run_accepts_raw_input(run, table):
    from bjepa.data import load, stack_frames
    from bjepa.inference.checkpoint import load_model

    model = load_model(run)
    assert model.standardizer is not None and model.obs_dim == 6
    seqs = load(table, columns=["p", "q", "r"], time_col="t", episode_col="unit")
    raw = torch.as_tensor(stack_frames(seqs.episode(0), 2), dtype=torch.float32)
    z = model.encode(raw)
    assert z.shape == (119, 4) and torch.isfinite(z).all()
    assert model.predict(raw).mean.shape == (119, 4)


def test_encode_and_predict_new_data(run, table, tmp_path):
    xr = pytest.importorskip("xarray")
    assert main(["encode", str(run), "--data", str(table), "--out",
                 str(tmp_path / "z.npy")]) == 0
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (240, 4)
    assert np.isnan(z[0]).all() and np.isnan(z[120]).all()  # no full stack at episode starts
    assert np.isfinite(z[1]).all()
    assert main(["predict", str(run), "--data", str(table), "--out",
                 str(tmp_path / "p.nc")]) == 0
    ds = xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf")
    assert ds["mean"].shape == (238, 4) and set(ds["episode"].values) == {"a", "b"}
    assert np.isnan(ds["observed"].values[-1]).all() and (ds["sd"].values > 0).all()
    ds.close()
    assert main(["encode", str(run), "--data", str(table), "--columns", "p,q",
                 "--out", str(tmp_path / "bad.npy")]) == 2


def test_diagnose_a_run_on_own_data(run):
    from bjepa.diagnostics.runs import diagnose_run

    results = diagnose_run(run, num_samples=20, psis_particles=50, out=run / "diag")
    assert [d.name for d, _ in results] == ["model"]
    assert (run / "diag" / "model" / "calibration.png").is_file()


@pytest.mark.parametrize("content, extra, match", [
    ("p,q\n1,2\n3,4,5\n", [], "malformed CSV"),
    ("p,q\n1,2\n3,abc\n", [], "column 'q' is not numeric"),
    ("p,q\n1,2\n,4\n5,6\n", [], "column 'p' is missing"),
    ("", [], "is empty"),
    ("p,q\n1,2\n3,4\n5,6\n", ["--context-frames", "3", "--val-frac", "0", "--test-frac", "0"],
     "fewer than context_frames"),
    ("p,q\n1,2\n3,4\n5,6\n", ["--val-frac", "0", "--test-frac", "0"],
     "fewer than the 3 training pairs"),
    ("p,q\n" + "1,2\n" * 30, ["--context-frames", "1", "--latent-dim", "4"],
     "latent_dim=4 > obs_dim=2"),
    ("p,q\n" + "1,2\n" * 30, ["--columns", "p,zz"], "has no column 'zz'"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, content, extra, match):
    data = tmp_path / "bad.csv"
    data.write_text(content)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--steps", "5", "--no-progress", "--out", str(out),
               *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err
    assert not out.exists()


def test_wrong_extension_and_undecodable_video(tmp_path, capsys):
    (tmp_path / "x.npy").write_text("p,q\n1,2\n")
    (tmp_path / "v.mp4").write_bytes(b"not a video at all")
    for name, match in (("x.npy", "is not a NumPy .npy file"),
                        ("v.mp4", "could not be decoded as a video")):
        rc = main(["train", "--data", str(tmp_path / name), "--out", str(tmp_path / "r"),
                   "--no-progress"])
        assert rc == 2 and match in capsys.readouterr().err
        assert not (tmp_path / "r").exists()


def test_a_one_dimensional_series_stacks_frames_for_the_latent(tmp_path, capsys):
    t = np.arange(300)
    np.save(tmp_path / "s.npy", (np.sin(t / 5) * 1000 + 5000).astype(np.float32))
    rc = main(["train", "--data", str(tmp_path / "s.npy"), "--steps", "20", "--no-progress",
               "--out", str(tmp_path / "r")])
    assert rc == 0
    assert "each context stacks 4 frames" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "config.json").read_text())["context_frames"] == 4


def test_train_streams_from_disk_when_asked(tmp_path):
    x = np.random.default_rng(0).normal(100.0, 10.0, size=(400, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tmp_path / "x.npy"), "--latent-dim", "2", "--stream", "on",
               "--batch-size", "64", "--num-workers", "1", "--steps", "20", "--no-progress",
               "--out", str(out)])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stream"] is True and cfg["batch_size"] == 64
    from bjepa.inference.checkpoint import load_model

    model = load_model(out)
    z = model.encode(torch.as_tensor(x[:50]))  # raw values: the stored standardiser applies
    assert z.abs().max() < 50
