"""Digit sequences: data, the MNIST idx reader, the logistic probe and the experiment."""

import numpy as np
import pytest
import torch

from bjepa.data import digits
from bjepa.experiments import digits as experiment
from bjepa.metrics import logistic_probe, logistic_probe_accuracy


@pytest.fixture(scope="module")
def images():
    return digits.load_digit_images("sklearn", size=8)


def test_sklearn_digits_load_and_upsample(images):
    assert images.images.shape == (1797, 8, 8)
    assert float(images.images.min()) >= 0 and float(images.images.max()) <= 1
    big = digits.load_digit_images("sklearn", size=16)
    assert big.images.shape == (1797, 16, 16)
    torch.testing.assert_close(big.labels, images.labels)


def test_pools_are_disjoint_and_hold_every_class(images):
    pools = digits.split_pools(images, np.random.default_rng(0))
    seen = [p.images.flatten(1) for p in (pools.train, pools.test, pools.goal, pools.distractor)]
    assert sum(len(s) for s in seen) == len(images)
    for i in range(4):
        assert set(getattr(pools, ("train", "test", "goal", "distractor")[i]).labels.tolist()) \
            == set(range(10))
        for j in range(i + 1, 4):  # no image in two pools (a few digits are duplicates)
            d = torch.cdist(seen[i], seen[j]).min(1).values
            assert float((d == 0).float().mean()) < 0.01


def test_sequence_advances_the_class_every_block(images):
    train, test, pools = digits.make_digit_split(0.0, 3, train_frames=50, test_frames=20,
                                                 frames_per_class=4, images=images)
    c = train.label
    assert torch.equal(c[1:], train.next_label[:-1])
    assert torch.equal((c[4:] - c[:-4]) % 10, torch.ones(46, dtype=torch.long))
    assert torch.equal(train.phase[:8], torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    # σ = 0: the frame is the clean image of its class, drawn from its own pool
    torch.testing.assert_close(train.obs, train.signal)
    pool = pools.train.images.flatten(1)
    assert float(torch.cdist(train.obs, pool).min(1).values.max()) == 0.0
    assert float(torch.cdist(test.obs, pool).min(1).values.min()) > 0.0


def test_distractor_blends_and_clamps(images):
    clean, _, _ = digits.make_digit_split(0.0, 1, train_frames=30, test_frames=10, images=images)
    noisy, _, _ = digits.make_digit_split(2.0, 1, train_frames=30, test_frames=10, images=images)
    torch.testing.assert_close(noisy.signal, clean.signal)  # the same draws, σ only blends
    assert float(noisy.obs.max()) <= 1.0 and float(noisy.obs.min()) >= 0.0
    assert bool((noisy.obs >= clean.obs).all()) and bool((noisy.obs > clean.obs).any())


def test_mnist_idx_round_trip_and_loader(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.arange(30, dtype=np.uint8) % 10
    digits.write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    digits.write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    np.testing.assert_array_equal(digits.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    mnist = digits.load_mnist(tmp_path)
    assert mnist.images.shape == (30, 28, 28)
    torch.testing.assert_close(mnist.images[3], torch.as_tensor(imgs[3] / 255.0,
                                                                dtype=torch.float32))
    assert mnist.labels.tolist() == labels.tolist()
    small = digits.load_digit_images(tmp_path, size=14)
    assert small.images.shape == (30, 14, 14)
    # the header's byte layout, written by hand: magic 0x00000801, one dimension of 3
    (tmp_path / "hand").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    assert digits.read_idx(tmp_path / "hand").tolist() == [7, 8, 9]


def test_idx_reader_refuses_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an idx file"):
        digits.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match="holds"):
        digits.read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="MNIST"):
        digits.load_mnist(tmp_path)


def test_logistic_probe_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 5, generator=g) * 4
    y = torch.arange(300) % 3
    z = centres[y] + torch.randn(300, 5, generator=g)
    assert logistic_probe_accuracy(z[:200], y[:200], z[200:], y[200:]) > 0.95
    noise = torch.randn(300, 5, generator=g)
    assert logistic_probe_accuracy(noise[:200], y[:200], noise[200:], y[200:]) < 0.55
    probe = logistic_probe(z, y)
    assert probe.predict(z).shape == (300,)
    with pytest.raises(ValueError, match="integer"):
        logistic_probe(z, y.float())
    with pytest.raises(ValueError, match="one label per row"):
        logistic_probe(z, y[:10])


def test_raw_pixels_predict_the_next_class_below_the_block_ceiling(images):
    train, test, _ = digits.make_digit_split(0.0, 0, train_frames=1500, test_frames=500,
                                             images=images)
    acc = logistic_probe_accuracy(train.obs, train.next_label, test.obs, test.next_label)
    # a single frame cannot tell where in its 8-frame block it is: at most 7/8 correct
    assert 0.5 < acc <= 7 / 8 + 0.03


@pytest.mark.slow
def test_quick_run_trains_probes_and_the_goal_prior(tmp_path, images):
    from bjepa.runs import RunFolder

    cfg = experiment.DigitsConfig.quick(models=["vjepa", "bjepa"], sigmas=[0.0], steps=60,
                                        train_frames=600, test_frames=300,
                                        goal_variances=[0.1, 10.0])
    with RunFolder(tmp_path / "run") as folder:
        out = experiment.run(cfg, folder)
    assert [r["model"] for r in out["results"]] == ["vjepa", "bjepa"]
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in out["results"])
    goals = {(g["goal"], g["goal_variance"]): g["accuracy"] for g in out["goal"]
             if g["probe"] == "target"}
    assert {g["probe"] for g in out["goal"]} == {"prediction", "target"}
    assert set(goals) == {("none", None), ("correct", 0.1), ("wrong", 0.1), ("correct", 10.0),
                          ("wrong", 10.0)}
    # a tight goal pulls the prediction to the goal's class, whichever it is
    assert goals["correct", 0.1] > goals["wrong", 0.1]
    for name in ("config.json", "results.csv", "goal_prior.csv", "summary.json",
                 "accuracy_vs_sigma.png", "goal_prior.png", "frames.png",
                 "checkpoints/bjepa-sigma0-seed0.pt"):
        assert (tmp_path / "run" / name).exists(), name


def test_goal_latents_come_from_the_goal_pool_only(images):
    from bjepa.models import BJEPA

    _, _, pools = digits.make_digit_split(0.0, 0, train_frames=50, test_frames=20,
                                          images=images)
    m = BJEPA(64, 4, encoder="mlp", hidden_dim=16)
    g = experiment.goal_latents(m, pools)
    z = m.encode_target(pools.goal.images.flatten(1))
    torch.testing.assert_close(g[3], z[pools.goal.labels == 3].mean(0))


def test_config_validation():
    with pytest.raises(ValueError, match="model"):
        experiment.DigitsConfig(models=["vjepa", "nope"]).validate()
    with pytest.raises(ValueError, match="goal_variances"):
        experiment.DigitsConfig(goal_variances=[0.0]).validate()


def test_cli_commands_are_registered_and_refuse_bad_models(tmp_path, capsys):
    from bjepa.cli import build_parser, main

    parser = build_parser()
    args = parser.parse_args(["digits", "--quick", "--seeds", "0-1", "--sigmas", "0,2"])
    assert args.seeds == [0, 1] and args.sigmas == [0.0, 2.0] and args.quick
    assert parser.parse_args(["baselines", "--quick"]).func is not None
    assert main(["digits", "--models", "nope", "--out", str(tmp_path / "d")]) == 2
    assert "model" in capsys.readouterr().err
    assert main(["baselines", "--models", "kalmann", "--out", str(tmp_path / "b")]) == 2
