"""Your own data: sources, sequences → pairs, standardisation, missing values, streaming."""

from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pytest
import torch

from bjepa.data import (
    DataError,
    Standardizer,
    from_array,
    load,
    load_pairs,
    make_loader,
    make_pairs,
    split_pairs,
    stack_frames,
)
from bjepa.data.streaming import ShuffledBatches
from bjepa.models import VJEPA

pd = pytest.importorskip("pandas")


# -- arrays ----------------------------------------------------------------------------------
def test_from_array_accepts_series_tables_3d_and_ragged_episodes():
    assert from_array(np.arange(10.0)).values.shape == (10, 1)
    s = from_array(torch.randn(7, 3))
    assert (s.dim, s.num_episodes) == (3, 1)
    s = from_array(np.zeros((4, 6, 2)))
    assert s.num_episodes == 4 and list(s.lengths()) == [6] * 4
    s = from_array([np.zeros((5, 2)), np.ones((9, 2))])
    assert list(s.starts) == [0, 5, 14]
    with pytest.raises(DataError, match="episode 0 has 2 features but episode 1 has 3"):
        from_array([np.zeros((5, 2)), np.ones((9, 3))])
    with pytest.raises(DataError, match="expected"):
        from_array(np.zeros((2, 3, 4, 5)))
    with pytest.raises(DataError, match="not numbers"):
        from_array(np.array([["a", "b"]]))


def test_missing_value_policies_on_arrays():
    x = np.arange(12.0).reshape(6, 2)
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    with pytest.raises(DataError, match=r"column 'x1' is missing \(NaN\) at row 2"):
        from_array(x)
    assert len(from_array(x, missing="drop")) == 4
    f = from_array(x, missing="ffill").values
    assert f[2, 1] == x[1, 1] and f[4, 0] == x[3, 0]
    i = from_array(x, missing="interpolate").values
    assert i[2, 1] == pytest.approx((x[1, 1] + x[3, 1]) / 2)
    with pytest.raises(DataError, match="unknown missing-value policy"):
        from_array(x, missing="zero")


# -- files -----------------------------------------------------------------------------------
def test_npy_is_memory_mapped_and_3d_files_are_episodes(tmp_path):
    x = np.random.default_rng(0).normal(size=(3, 40, 2)).astype(np.float32)
    np.save(tmp_path / "e.npy", x)
    s = load(tmp_path / "e.npy")
    assert isinstance(s.values.base, np.memmap) or isinstance(s.values, np.memmap)
    assert s.num_episodes == 3 and s.dim == 2
    np.savez(tmp_path / "a.npz", x=x[0], episodes=np.repeat([7, 8], 20))
    s = load(tmp_path / "a.npz")
    assert isinstance(s.values, np.memmap) and s.episode_ids == ["7", "8"]
    np.savez_compressed(tmp_path / "c.npz", frames=x[0])
    assert np.array_equal(load(tmp_path / "c.npz").values, x[0])


def _table(tmp_path, name="t.csv"):
    df = pd.DataFrame({"date": pd.date_range("2001-01-01", periods=30, freq="D")[::-1],
                       "a": np.linspace(0, 1, 30), "b": np.arange(30.0) * 1000,
                       "unit": [f"u{i // 15}" for i in range(30)]})
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    return df, path


def test_csv_columns_time_and_episode_columns(tmp_path):
    df, path = _table(tmp_path)
    s = load(path, columns=["a", "b"], time_col="date", episode_col="unit")
    assert s.columns == ["a", "b"] and s.num_episodes == 2 and s.episode_ids == ["u0", "u1"]
    first = s.episode(0)[:, 0]
    assert np.all(np.diff(first) < 0)  # sorted by date: 'a' falls in time
    with pytest.raises(DataError, match="column 'unit' is not numeric .*row 0.*'u0'"):
        load(path, time_col="date")
    with pytest.raises(DataError, match="no column 'zz'"):
        load(path, columns=["zz"])


def test_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    df, path = _table(tmp_path, "t.parquet")
    s = load(path, columns=["b"], time_col="date")
    assert s.values[0, 0] == df["b"].iloc[-1]


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"a,b\n", "no data rows|no rows"),
    (b"a,b\n1,2\n3,4,5,6\n", "malformed CSV"),
    (b"a,b\n1,2\n3,x\n", r"column 'b' is not numeric \(row 1 \(line 3 of the file\)"),
    (b"a,b\n1,2\nnan,4\n", r"column 'a' is missing \(NaN\) at row 1"),
    (b"a,b\n1,2\ninf,4\n", "is infinite"),
    (b"\x93NUMPY\x01\x00binary", "is not a text"),
])
def test_bad_csv_gives_one_line_errors(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_files_that_are_not_what_their_extension_says(tmp_path):
    (tmp_path / "x.npy").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="is not a NumPy .npy file"):
        load(tmp_path / "x.npy")
    (tmp_path / "x.parquet").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="is not a Parquet file"):
        load(tmp_path / "x.parquet")
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(DataError, match=r"is not a .npz \(zip\) file"):
        load(tmp_path / "x.npz")
    (tmp_path / "x.xyz").write_text("1")
    with pytest.raises(DataError, match="unknown data format"):
        load(tmp_path / "x.xyz")
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nope.csv")
    with zipfile.ZipFile(tmp_path / "two.npz", "w") as zf:
        zf.writestr("p.npy", b"")
        zf.writestr("q.npy", b"")
    with pytest.raises(DataError, match="several arrays"):
        load(tmp_path / "two.npz")


def test_image_folder_and_video(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    rng = np.random.default_rng(0)
    frames = (rng.uniform(size=(5, 12, 10, 3)) * 255).astype(np.uint8)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        iio.imwrite(folder / f"f{i}.png", f)  # natural order: f2 before f10
    s = load(folder, grayscale=True, size=(6, 5), crop=(0, 0, 12, 10))
    assert s.values.shape == (5, 30) and s.values.min() >= 0 and s.values.max() <= 1
    iio.imwrite(tmp_path / "v.gif", frames)
    assert load(tmp_path / "v.gif").values.shape == (5, 12 * 10 * 3)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with pytest.raises(DataError, match="could not be decoded as a video"):
        load(tmp_path / "broken.mp4")
    with pytest.raises(DataError, match="does not fit"):
        load(folder, crop=(0, 0, 50, 50))


# -- pairs -----------------------------------------------------------------------------------
def test_pairs_stack_frames_respect_episodes_and_horizon():
    eps = [np.arange(10.0)[:, None] + 100 * e for e in range(3)]
    p = make_pairs(eps, context_frames=3, horizon=2)
    assert len(p) == 3 * (10 - 3 - 2 + 1) and p.obs_dim == 3
    ctx, tgt = p.tensors(torch.float64)
    assert ctx[0].tolist() == [0, 1, 2] and tgt[0].tolist() == [2, 3, 4]
    # no pair crosses an episode: every row's frames share the episode's hundreds digit
    both = torch.cat([ctx, tgt], 1)
    assert torch.all((both // 100).amax(1) == (both // 100).amin(1))
    with pytest.raises(DataError, match=r"episode 1 has 3 frame\(s\), fewer than context_frames"):
        make_pairs([np.zeros((9, 1)), np.zeros((3, 1))], context_frames=2, horizon=2)
    x = torch.arange(12.0).reshape(6, 2)
    assert stack_frames(x, 2).shape == (5, 4) and stack_frames(x, 2)[0].tolist() == [0, 1, 2, 3]


def test_splits_by_time_and_by_episode_and_standardizer_on_train_only():
    x = np.concatenate([np.zeros((80, 1)), np.full((20, 1), 50.0)])  # the future is shifted
    data = load_pairs(x, val_frac=0.2)
    assert data.settings["split"] == "auto" and len(data.val) == 19
    assert float(data.standardizer.mean[0]) == 0.0  # fitted on the first 80 frames only
    parts = split_pairs(from_array(np.zeros((10, 20, 1))), val_frac=0.2, test_frac=0.1,
                        by="episode")
    rows = {k: {int(a) for a, _ in p.segments} for k, p in parts.items()}
    assert sum(len(r) for r in rows.values()) == 10 and not rows["train"] & rows["val"]
    with pytest.raises(DataError, match="must be < 1"):
        split_pairs(from_array(np.zeros((10, 1))), val_frac=0.6, test_frac=0.5)


# -- the model side --------------------------------------------------------------------------
def test_standardizer_survives_checkpoint_and_models_accept_raw_input(tmp_path):
    from bjepa.inference.checkpoint import load_model, save_checkpoint

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(200, 3)) * [1e3, 2.0, 0.01] + [1e4, -5, 0])
    m = VJEPA(3, 2)
    m.standardizer = Standardizer.fit(x)
    ctx, _ = m.check_inputs(x[:-1], x[1:])
    assert ctx.mean(0).abs().max() < 0.2 and (ctx.std(0) - 1).abs().max() < 0.1
    z_raw = m.encode(x)
    assert torch.allclose(m.encode(ctx), m.encode(x[:-1]), atol=1e-6)  # standardised once
    save_checkpoint(tmp_path / "m.pt", m)
    back = load_model(tmp_path / "m.pt")
    assert back.standardizer is not None and torch.allclose(back.encode(x), z_raw)
    with pytest.raises(ValueError, match="reads rows of 3 values, the model's obs_dim is 4"):
        VJEPA(4, 2).standardizer = m.standardizer


def test_checkpoints_without_a_standardizer_still_load(tmp_path):
    from bjepa.inference.checkpoint import load_model, save_checkpoint

    m = VJEPA(3, 2)
    save_checkpoint(tmp_path / "old.pt", m)  # the EMA-only extra state of older files
    assert load_model(tmp_path / "old.pt").standardizer is None


def test_unstandardised_data_warn_and_small_data_dimension_is_refused():
    x = torch.randn(100, 3) * 100 + 13_000
    m = VJEPA(3, 2)
    with pytest.warns(UserWarning, match=r"looks unstandardised .*mean 1.30\d?e\+04"):
        m.check_inputs(x[:-1], x[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.check_inputs(x[:-1], x[1:])  # once per model
    with pytest.raises(ValueError, match="stack k >= 4 past frames .*context_frames=4"):
        VJEPA(1, 4).check_inputs(torch.randn(10, 1), torch.randn(10, 1))
    m = VJEPA(4, 4)
    m.standardizer = Standardizer.fit(torch.randn(20, 1)).with_frames(4)
    with pytest.raises(ValueError, match=r"stack_frames\(x, 4\)"):
        m.encode(torch.randn(5, 1))


# -- streaming -------------------------------------------------------------------------------
def test_loader_yields_every_pair_once_per_epoch_and_reshuffles(tmp_path):
    x = np.arange(1000.0, dtype=np.float32)[:, None]
    np.save(tmp_path / "x.npy", x)
    pairs = make_pairs(load(tmp_path / "x.npy"))
    loader = make_loader(pairs, 64, seed=3)
    assert len(loader.dataset) == 999
    epochs = []
    for _ in range(2):
        ctx = torch.cat([c for c, _ in loader])
        epochs.append(ctx[:, 0])
        assert sorted(ctx[:, 0].tolist()) == list(range(999))
    assert not torch.equal(epochs[0], epochs[1])
    ctx, tgt = loader.dataset[np.array([5, 2])]
    assert ctx[:, 0].tolist() == [2, 5] and tgt[:, 0].tolist() == [3, 6]
    batch = next(iter(loader))
    assert torch.equal(batch[1], batch[0] + 1)


def test_batches_shard_like_a_distributed_sampler():
    shards = [list(ShuffledBatches(103, 10, seed=1, num_replicas=4, rank=r)) for r in range(4)]
    seen = np.concatenate([np.concatenate(s) for s in shards])
    assert len(seen) == 104 and set(seen.tolist()) == set(range(103))
    firsts = [np.concatenate(s)[:3].tolist() for s in shards]
    assert len({tuple(f) for f in firsts}) == 4


def test_loader_with_a_worker_process_and_standardizing(tmp_path):
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(500, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = load_pairs(tmp_path / "x.npy", val_frac=0.0)
    loader = make_loader(data.train, 100, num_workers=1, standardizer=data.standardizer)
    ctx = torch.cat([c for c, _ in loader])
    assert ctx.shape == (499, 2) and ctx.mean().abs() < 0.1


def test_streamed_batches_equal_what_the_model_standardises_in_memory(tmp_path):
    from bjepa.inference import fit

    x = np.random.default_rng(1).normal(3.0, 40.0, size=(400, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = load_pairs(tmp_path / "x.npy", context_frames=2, val_frac=0.0)
    model = VJEPA(data.obs_dim, 2)
    model.standardizer = data.standardizer
    ctx, tgt = model.check_inputs(*data.train.tensors())
    loader = data.train.loader(50, standardizer=data.standardizer)
    c, t = loader.dataset[np.array([7, 3, 250])]
    assert torch.allclose(c, ctx[[3, 7, 250]], atol=1e-5)
    assert torch.allclose(t, tgt[[3, 7, 250]], atol=1e-5)
    hist = fit(model, loader, steps=5, progress=False)
    assert np.isfinite(hist.final_loss) and model.standardizer is data.standardizer


@pytest.mark.parametrize("stamps", [["1963-Q4", "1963-Q2", "1963-Q3"],
                                    ["1963Q4", "1963Q2", "1963Q3"],
                                    ["2001-03-01", "2001-01-01", "2001-02-01"]])
def test_time_columns_of_dates_and_quarters(tmp_path, stamps):
    pd.DataFrame({"date": stamps, "a": [3.0, 1.0, 2.0]}).to_csv(tmp_path / "q.csv", index=False)
    assert load(tmp_path / "q.csv", time_col="date").values[:, 0].tolist() == [1.0, 2.0, 3.0]
    pd.DataFrame({"date": ["x", *stamps[1:]], "a": [3.0, 1.0, 2.0]}).to_csv(tmp_path / "q.csv",
                                                                           index=False)
    with pytest.raises(DataError, match=r"neither numbers nor dates \(row 0"):
        load(tmp_path / "q.csv", time_col="date")


def test_a_3d_tensor_given_to_fit_points_to_make_pairs():
    x = torch.randn(2, 10, 3)
    with pytest.raises(ValueError, match=r"must have 2 dimensions.*make_pairs\(x\)"):
        VJEPA(3, 2).check_inputs(x, x)
    ctx, tgt = make_pairs(x).tensors()
    assert ctx.shape == (18, 3)
    VJEPA(3, 2).check_inputs(ctx, tgt)


def test_action_columns_ride_along_as_the_packed_context(tmp_path):
    from bjepa.models import ActionVJEPA

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x0": rng.normal(size=40), "x1": rng.normal(size=40),
                       "u": np.arange(40.0), "t": np.arange(40)})
    df.to_csv(tmp_path / "a.csv", index=False)
    seqs = load(tmp_path / "a.csv", columns=["x0", "x1"], action_cols=["u"], time_col="t")
    assert seqs.action_columns == ["u"] and seqs.actions.shape == (40, 1)
    ctx, tgt = make_pairs(seqs, horizon=1).tensors()
    assert ctx.shape == (39, 3) and tgt.shape == (39, 2)
    assert ctx[:, 2].tolist() == list(range(39))  # u_t sits with x_t
    model = ActionVJEPA(2, 2, action_dim=1)
    model.check_inputs(ctx, tgt)
    assert torch.equal(model.pack(ctx[:, :2], ctx[:, 2:]), ctx)


@pytest.mark.parametrize("layout", ["npy", "npy3d", "npz"])
def test_streamed_batches_are_positional_reads_of_the_mapped_file(tmp_path, layout):
    from bjepa.data.streaming import PairDataset

    x = np.random.default_rng(0).normal(size=(4, 50, 3)).astype(np.float32)
    if layout == "npz":
        np.savez(tmp_path / "x.npz", x=x.reshape(200, 3))
        seqs = load(tmp_path / "x.npz")
    else:
        np.save(tmp_path / "x.npy", x if layout == "npy3d" else x.reshape(200, 3))
        seqs = load(tmp_path / "x.npy")
    pairs = make_pairs(seqs, context_frames=3, horizon=2)
    ds = PairDataset(pairs)
    assert ds._rows is not None  # pread from the file, not faults through the map
    idx = np.array([0, 5, 44, len(pairs) - 1])
    ctx, tgt = ds[idx]
    want_c, want_t, _ = pairs.batch(idx)
    assert np.array_equal(ctx.numpy(), want_c) and np.array_equal(tgt.numpy(), want_t)
    assert PairDataset(make_pairs(x.reshape(200, 3)))._rows is None  # in memory: plain reads


def test_block_shuffling_covers_every_pair_once_and_reads_runs(tmp_path):
    from bjepa.data.streaming import PairDataset

    batches = list(ShuffledBatches(1000, 64, block=16, seed=0))
    every = np.concatenate(batches)
    assert sorted(every.tolist()) == list(range(1000))
    assert np.mean(np.diff(batches[0]) == 1) > 0.8  # runs of consecutive pairs
    np.save(tmp_path / "x.npy", np.arange(600.0, dtype=np.float32).reshape(300, 2))
    pairs = make_pairs(load(tmp_path / "x.npy"), context_frames=2)
    ctx, tgt = PairDataset(pairs)[batches[0][batches[0] < len(pairs)]]
    assert torch.equal(tgt[:, :2], ctx[:, 2:])  # the target stack is the context one step on
