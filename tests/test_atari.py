"""Atari: conv encoders, ALE data and labels, distractors, caching, the experiment.

See docs/method.md#natural-video-atari."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py")

from bjepa.data import atari  # noqa: E402
from bjepa.experiments import atari as exp  # noqa: E402
from bjepa.models import JEPA, VAE, VJEPA, AutoRegressive  # noqa: E402
from bjepa.models.conv import (  # noqa: E402
    FrameStackDecoder,
    FrameStackEncoder,
    conv_encoder_name,
    infer_frame_shape,
    register_conv,
)
from bjepa.models.encoders import DECODERS, ENCODERS, make_encoder  # noqa: E402


# -- conv encoder / decoder -----------------------------------------------------------------
@pytest.mark.parametrize("k,h,w", [(2, 48, 48), (1, 84, 84), (3, 36, 40), (4, 20, 20),
                                   (2, 16, 17), (1, 64, 50)])
def test_encoder_decoder_shapes_roundtrip(k, h, w):
    enc = FrameStackEncoder(k, h, w, 5, hidden_dim=16, channels=(4, 8, 8))
    dec = FrameStackDecoder(5, k, h, w, hidden_dim=16, channels=(4, 8, 8))
    x = torch.randn(3, k * h * w)
    z = enc(x)
    assert z.shape == (3, 5)
    assert dec(z).shape == (3, k * h * w)
    # leading batch dimensions are kept (Pyro may add a particle dimension)
    assert enc(x.reshape(1, 3, -1)).shape == (1, 3, 5)
    # the frame layout is (frame, row, column): the encoder sees frame i in channel i
    seen = []
    handle = enc.features[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    enc(x)
    handle.remove()
    torch.testing.assert_close(seen[0], x.reshape(3, k, h, w))


def test_encoder_last_two_parameters_are_final_linear():
    enc = FrameStackEncoder(2, 48, 48, 6, hidden_dim=32, bias=True)
    *_, w, b = enc.parameters()
    final = enc.head[-1]
    assert w is final.weight and b is final.bias and w.shape == (6, 32)
    no_bias = FrameStackEncoder(2, 48, 48, 6, hidden_dim=32, bias=False)
    assert no_bias.head[-1].bias is None


def test_vjepa_conv_variance_head_starts_homoscedastic():
    """VJEPA zeroes the second-to-last parameter of its target-scale net and fills the last:
    with the conv net that must make the initial target scale the same for every input."""
    m = VJEPA(2 * 36 * 36, 3, encoder="conv", hidden_dim=16, target_scale_init=0.2)
    x = torch.randn(5, 2 * 36 * 36) * 3
    scale = m.target_dist(x).base_dist.scale
    torch.testing.assert_close(scale, torch.full_like(scale, 0.2), atol=2e-4, rtol=0)


def _persistent_scene_with_fresh_noise(n=400, k=2, side=36, seed=0):
    """Smooth random scenes that persist from context to target, plus a centred patch of
    noise drawn afresh for every frame (a noisy TV)."""
    g = torch.Generator().manual_seed(seed)
    scene = 7 * torch.nn.functional.avg_pool2d(
        torch.randn(n, 1, side + 6, side + 6, generator=g), 7, stride=1).expand(n, k, side, side)

    def frames():
        noise = torch.zeros(n, k, side, side)
        lo, hi = side // 4, 3 * side // 4
        noise[:, :, lo:hi, lo:hi] = 2.0 * torch.randn(n, k, hi - lo, hi - lo, generator=g)
        return (scene + noise).reshape(n, -1)

    return scene, frames(), frames()


def test_first_layer_cca_start_sees_the_scene_through_fresh_noise():
    scene, ctx, tgt = _persistent_scene_with_fresh_noise()
    corr = {}
    for init in ["random", "cca"]:
        torch.manual_seed(1)
        enc = FrameStackEncoder(2, 36, 36, 4, hidden_dim=16, channels=(8, 8, 8))
        if init == "cca":
            rho = enc.init_first_layer(ctx, tgt)
            assert rho.shape == (8,) and bool((rho[:-1] >= rho[1:]).all())
        conv = enc.features[0]
        with torch.no_grad():
            clean = conv(scene.reshape(-1, 2, 36, 36)).transpose(0, 1).reshape(8, -1)
            noisy = conv(ctx.reshape(-1, 2, 36, 36)).transpose(0, 1).reshape(8, -1)
        corr[init] = torch.stack([torch.corrcoef(torch.stack([clean[i], noisy[i]]))[0, 1]
                                  for i in range(8)])
        if init == "cca":  # white on the data it was fitted to
            torch.testing.assert_close(noisy.mean(1), torch.zeros(8), atol=1e-4, rtol=0)
            torch.testing.assert_close(noisy.std(1), torch.ones(8), atol=1e-3, rtol=0)
    # the filters respond to what persists, not to the noise
    assert corr["cca"].mean() > 0.85 and corr["cca"].min() > 0.75
    assert corr["random"].mean() < 0.7


def test_first_layer_cca_start_keeps_extra_filters_random():
    enc = FrameStackEncoder(1, 16, 16, 4, hidden_dim=8, channels=(32, 8, 8))  # 4×4 kernel
    before = enc.features[0].weight.detach().clone()
    x = torch.randn(50, 256)
    rho = enc.init_first_layer(x, x + 0.1 * torch.randn_like(x))
    assert rho.shape == (16,)
    after = enc.features[0].weight
    assert not torch.equal(after[:16], before[:16])
    assert torch.equal(after[16:], before[16:])


def test_cca_start_of_a_conv_model_initialises_the_first_layer_and_the_ema_copy():
    _, ctx, tgt = _persistent_scene_with_fresh_noise(n=120)
    name = register_conv(2, 36, channels=(8, 8, 8))
    m = VJEPA(ctx.shape[1], 3, encoder=name, hidden_dim=16)
    before = m.context_encoder.features[0].weight.detach().clone()
    m.init_from_data(ctx, tgt)
    after = m.context_encoder.features[0].weight
    assert not torch.equal(after, before)
    torch.testing.assert_close(m.target_encoder.features[0].weight, after)


def test_infer_frame_shape_and_explicit_registration():
    assert infer_frame_shape(2 * 48 * 48) == (2, 48, 48)
    assert infer_frame_shape(84 * 84) == (1, 84, 84)
    assert infer_frame_shape(4 * 32 * 32) == (1, 64, 64)  # the documented ambiguity
    with pytest.raises(ValueError, match="obs_dim"):
        infer_frame_shape(1000)
    with pytest.raises(ValueError, match="obs_dim"):
        make_encoder("conv", 2 * 15 * 15, 4)  # frames below the minimum side
    name = register_conv(4, 32)
    assert name == "conv4x32x32" and DECODERS[name] == "deconv4x32x32" and name in ENCODERS
    net = make_encoder(name, 4 * 32 * 32, 3)
    assert (net.frames, net.height, net.width) == (4, 32, 32)
    with pytest.raises(ValueError, match="obs_dim"):
        make_encoder(name, 2 * 32 * 32, 3)
    assert conv_encoder_name(2, 48) == "conv"
    assert conv_encoder_name(4, 32) == "conv4x32x32"
    assert conv_encoder_name(2, 48, channels=(8, 16, 16)) == "conv2x48x48-c8.16.16"
    assert DECODERS["conv"] == "deconv"


def test_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        FrameStackEncoder(2, 48, 48, 4, channels=(8, 8))
    with pytest.raises(ValueError, match="at least 16"):
        FrameStackEncoder(2, 12, 12, 4)
    with pytest.raises(ValueError, match="height"):
        register_conv(2, 0)


@pytest.mark.parametrize("cls", [VJEPA, JEPA, VAE, AutoRegressive])
def test_every_model_trains_with_conv_frame_stacks(cls):
    from bjepa.inference import fit

    name = register_conv(2, 20, channels=(4, 8, 8))
    torch.manual_seed(0)
    x = torch.randn(40, 2 * 20 * 20)
    m = cls(2 * 20 * 20, 3, encoder=name, hidden_dim=16)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs
    before = [c.weight.detach().clone() for c in convs]
    hist = fit(m, x[:-1], x[1:], steps=30, lr=1e-2, progress=False)
    assert np.isfinite(hist.final_loss)
    # trains: the loss falls and every convolution (encoder and decoder) is updated
    assert np.mean(hist.loss[-5:]) < np.mean(hist.loss[:5])
    assert all(not torch.equal(b, c.weight) for b, c in zip(before, convs, strict=True))
    assert m.encode(x).shape == (40, 3)
    if cls in (VAE, AutoRegressive):
        assert isinstance(m.decoder, FrameStackDecoder)


# -- labels verified against the pixels -----------------------------------------------------
@pytest.fixture(scope="module")
def pong_steps():
    # one emulator frame per step, so the screen is exactly the frame the RAM describes (with
    # frame skip the recorded screen is the max of two frames); long sticky runs sweep paddles
    return list(atari.rollout("pong", episodes=2, max_episode_steps=2000, frame_skip=1,
                              sticky=0.95, seed=1))


def _column_band_rows(screen, cols, value):
    court = screen[atari.PONG_COURT[0]:atari.PONG_COURT[1], slice(*cols)]
    rows = np.nonzero((court == value).any(1))[0] + atari.PONG_COURT[0]
    return rows


def test_pong_paddle_and_ball_pixels_follow_ram(pong_steps):
    """Where the objects are drawn on the raw screen is an affine function of the RAM bytes."""
    player, enemy, ball = [], [], []
    for s in pong_steps:
        rows = _column_band_rows(s.screen, atari.PONG_PLAYER["cols"], atari.PONG_PLAYER["value"])
        if len(rows) == 16:  # whole paddle inside the court
            player.append((rows.max(), s.ram[51]))
        rows = _column_band_rows(s.screen, atari.PONG_ENEMY["cols"], atari.PONG_ENEMY["value"])
        if len(rows) == 16:
            enemy.append((rows.max(), s.ram[50]))
        court = s.screen[atari.PONG_COURT[0]:atari.PONG_COURT[1]]
        ys, xs = np.nonzero(court == atari.PONG_BALL_VALUE)
        if len(xs):
            ball.append((xs.min(), ys.min() + atari.PONG_COURT[0], s.ram[49], s.ram[54]))
    player, enemy, ball = np.array(player, float), np.array(enemy, float), np.array(ball, float)
    assert len(player) > 500 and len(enemy) > 500 and len(ball) > 500
    # the paddles move over most of the court
    assert np.ptp(player[:, 1]) > 120 and np.ptp(enemy[:, 1]) > 120
    # bottom edge of the paddles: ram[51] + 1 or 2 (sub-frame jitter), ram[50] exactly
    assert set(np.unique(player[:, 0] - player[:, 1])) <= {1.0, 2.0}
    assert np.all(enemy[:, 0] == enemy[:, 1])
    # ball: column = ram[49] − 49 exactly; top row = ram[54] − 14 or − 15 (a handful of
    # frames at a wall bounce differ by one or two rows more)
    assert np.all(ball[:, 0] == ball[:, 2] - 49)
    assert np.isin(ball[:, 1] - ball[:, 3], [-15.0, -14.0]).mean() > 0.99
    assert np.all(np.abs(ball[:, 1] - ball[:, 3] + 14) <= 2)
    # and a shuffled RAM byte would not fit: the check can fail
    assert not np.all(ball[:, 0] == np.roll(ball[:, 2], 7) - 49)


def test_downsampled_frames_carry_the_labels():
    """In the 48 × 48 training frames, the paddle and ball positions still track the labels."""
    data = atari.generate("pong", episodes=2, max_episode_steps=300, seed=2, progress=False)
    f = data.frames.astype(float)
    bg = np.median(f)
    rows = np.arange(data.size)

    def centroid(band, axis_rows=True):
        w = np.clip(band - bg, 0, None)
        return (w * rows).sum(1) / np.maximum(w.sum(1), 1e-9)

    scale = data.size / 160
    player = centroid(f[:, :, int(141 * scale)])
    enemy = centroid(f[:, :, int(17 * scale)])
    vis = data.visible
    assert np.corrcoef(player[vis[:, 0]], data.labels[vis[:, 0], 0])[0, 1] > 0.95
    assert np.corrcoef(enemy[vis[:, 1]], data.labels[vis[:, 1], 1])[0, 1] > 0.95
    # between the paddles' columns, the ball is the brightest thing on the court
    lo, hi = int(24 * scale), int(136 * scale)
    m = vis[:, 2] & ((data.labels[:, 2] - 49) > 24) & ((data.labels[:, 2] - 49) < 136)
    flat = f[m][:, :, lo:hi].reshape(m.sum(), -1).argmax(1)
    by, bx = np.divmod(flat, hi - lo)
    assert m.sum() > 100
    assert np.corrcoef(bx, data.labels[m, 2])[0, 1] > 0.95
    assert np.corrcoef(by, data.labels[m, 3])[0, 1] > 0.95
    # the visibility mask is real: the ball is off screen between points
    assert 0.2 < vis[:, 2].mean() < 0.95


# -- data set mechanics ---------------------------------------------------------------------
def test_generate_is_seeded_and_shaped():
    a = atari.generate("pong", size=36, episodes=2, max_episode_steps=40, seed=3, progress=False)
    b = atari.generate("pong", size=36, episodes=2, max_episode_steps=40, seed=3, progress=False)
    c = atari.generate("pong", size=36, episodes=2, max_episode_steps=40, seed=4, progress=False)
    assert a.frames.shape == (80, 36, 36) and a.frames.dtype == np.uint8
    assert a.ram.shape == (80, 128) and a.labels.shape == (80, 4)
    np.testing.assert_array_equal(a.labels, a.ram[:, [51, 50, 49, 54]])
    np.testing.assert_array_equal(a.frames, b.frames)
    assert not np.array_equal(a.actions, c.actions)
    assert a.label_names == ("player_y", "enemy_y", "ball_x", "ball_y")


def test_cache_generates_once(tmp_path, monkeypatch):
    calls = []
    real = atari.generate

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(atari, "generate", counting)
    kw = dict(size=36, episodes=2, max_episode_steps=30, seed=0, progress=False)
    a = atari.load_frames("pong", cache_dir=tmp_path, **kw)
    b = atari.load_frames("pong", cache_dir=tmp_path, **kw)
    assert len(calls) == 1
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("pong-36px-2ep-seed0-")
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.visible, b.visible)
    assert b.meta["sticky"] == 0.25 and b.label_names == a.label_names
    atari.load_frames("pong", cache_dir=tmp_path, **{**kw, "seed": 1})
    assert len(calls) == 2 and len(list(tmp_path.glob("*.npz"))) == 2
    # the environment variable chooses the default folder
    monkeypatch.setenv("BJEPA_CACHE", str(tmp_path / "env"))
    assert atari.default_cache_dir() == tmp_path / "env" / "atari"
    with pytest.raises(TypeError, match="unknown argument"):
        atari.load_frames("pong", cache_dir=tmp_path, colour=True)


def test_split_by_episode_and_stacks_stay_inside_episodes():
    data = atari.generate("pong", size=36, episodes=4, max_episode_steps=30, seed=0,
                          progress=False)
    train, test = data.split(test_episodes=1)
    assert set(train.episode) == {0, 1, 2} and set(test.episode) == {3}
    t = exp._stack_index(train.episode, 2)
    assert len(t) == 3 * (30 - 3)
    assert np.all(train.episode[t - 1] == train.episode[t + 2])
    with pytest.raises(ValueError, match="test_episodes"):
        data.split(test_episodes=4)


def test_other_games_by_name_and_declared_labels():
    spec = atari.register_game("breakout_test", rom="breakout", labels={"paddle_x": 72})
    d = atari.generate(spec, size=36, episodes=1, max_episode_steps=20, seed=0, progress=False)
    assert d.label_names == ("paddle_x",)
    np.testing.assert_array_equal(d.labels[:, 0], d.ram[:, 72])
    assert d.visible.all()
    plain = atari.generate("space_invaders", size=36, episodes=1, max_episode_steps=5,
                           progress=False)
    assert plain.labels.shape == (5, 0)
    with pytest.raises(ValueError, match="game"):
        atari.game_spec("not_a_game")
    with pytest.raises(ValueError, match="labels"):
        atari.register_game("bad", rom="pong", labels={"x": 300})
    atari.GAMES.pop("breakout_test")


# -- distractors ----------------------------------------------------------------------------
def _lag1(u):
    a, b = u[:-1].ravel(), u[1:].ravel()
    return np.corrcoef(a, b)[0, 1]


def test_tv_noise_is_iid_in_time_inside_the_patch():
    u = atari.make_distractor("tv", 400, 48, seed=0, cell=4)
    rows, cols = atari.patch_slices(48, 0.5)
    inside = u[:, rows, cols]
    assert abs(inside.std() - 1.0) < 0.05
    assert abs(_lag1(inside)) < 0.05
    outside = u.copy()
    outside[:, rows, cols] = 0
    assert not outside.any()
    # 4 × 4 blocks: neighbours inside a block are equal
    np.testing.assert_array_equal(inside[:, 0, 0], inside[:, 3, 3])
    assert not np.array_equal(inside[:, 0, 0], inside[:, 4, 4])


def test_ar1_noise_has_the_requested_correlation():
    u = atari.make_distractor("ar1", 3000, 36, seed=0, rho=0.9)
    rows, cols = atari.patch_slices(36, 0.5)
    inside = u[:, rows, cols]
    assert abs(_lag1(inside) - 0.9) < 0.03
    assert abs(inside.std() - 1.0) < 0.1


def test_game_blend_and_sigma_scaling():
    pong = atari.generate("pong", size=36, episodes=1, max_episode_steps=50, progress=False)
    other = atari.generate("space_invaders", size=36, episodes=1, max_episode_steps=30,
                           progress=False)
    u = atari.make_distractor("game", 50, 36, other=other)
    assert abs(u[:30].mean()) < 1e-4 and abs(u[:30].std() - 1.0) < 1e-3
    np.testing.assert_array_equal(u[30:], u[:20])  # cycled
    x0 = atari.distracted(pong, "game", 0.0, other=other)
    np.testing.assert_array_equal(x0, pong.frames_float())
    x2 = atari.distracted(pong, "game", 2.0, other=other)
    np.testing.assert_allclose(x2 - x0, 2.0 * u, atol=1e-5)
    with pytest.raises(ValueError, match="other"):
        atari.make_distractor("game", 5, 36)
    with pytest.raises(ValueError, match="distractor"):
        atari.make_distractor("static", 5, 36)
    with pytest.raises(ValueError, match="sigma"):
        atari.distracted(pong, "tv", -1.0)


# -- experiment -----------------------------------------------------------------------------
def test_mlp_probe_beats_linear_on_a_nonlinear_target():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1200, 3, generator=g)
    y = torch.stack([z[:, 0] ** 2, torch.sin(2 * z[:, 1]), z[:, 2]], 1)
    mlp = exp.mlp_probe_r2(z[:900], y[:900], z[900:], y[900:], steps=800, hidden=32)
    assert mlp[0] > 0.9 and mlp[1] > 0.8 and mlp[2] > 0.95
    from bjepa.metrics import linear_probe_r2

    lin = linear_probe_r2(z[:900], y[:900], z[900:], y[900:], per_dim=True)
    assert lin[0] < 0.2 and mlp[0] > lin[0] + 0.5
    # masked entries do not count: garbage where the mask is off leaves the score unchanged
    y_bad = y.clone()
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[::3, 0] = False
    y_bad[::3, 0] = 1e3
    masked = exp.mlp_probe_r2(z[:900], y_bad[:900], z[900:], y_bad[900:], mask_train=mask[:900],
                              mask_test=mask[900:], steps=800, hidden=32)
    assert masked[0] > 0.85


def test_compare_reports_margin_against_spread():
    rows = [{"model": m, "sigma": 1.0, "seed": s, "linear_r2": v}
            for m, vals in [("vjepa", [0.6, 0.7, 0.65]), ("vae", [0.1, 0.2, 0.15])]
            for s, v in enumerate(vals)]
    c = exp.compare(rows)
    assert c["margin"] == pytest.approx(0.5) and c["spread"] == pytest.approx(0.1)
    assert c["passes"]
    rows[0]["linear_r2"] = -0.5
    assert not exp.compare(rows)["passes"]
    with pytest.raises(ValueError, match="no"):
        exp.compare(rows, a="jepa")


def test_config_validation_names_the_argument():
    with pytest.raises(ValueError, match="model"):
        exp.AtariConfig(models=["gpt"]).validate()
    with pytest.raises(ValueError, match="distractor"):
        exp.AtariConfig(distractor="static").validate()
    with pytest.raises(ValueError, match="sigma"):
        exp.AtariConfig(sigmas=[-1.0]).validate()
    with pytest.raises(ValueError, match="no labels"):
        exp.AtariConfig(game="space_invaders").validate()
    with pytest.raises(ValueError, match="episode_steps"):
        exp.AtariConfig(episode_steps=3).validate()
    with pytest.raises(ValueError, match="init"):
        exp.AtariConfig(init="pca").validate()


def test_init_reaches_the_three_predictive_models():
    cfg = exp.AtariConfig.quick(init="random")
    obs_dim = cfg.context_frames * cfg.size**2
    for name in ["vjepa", "bjepa", "jepa"]:
        assert exp.build_model(name, obs_dim, cfg).init == "random"
    assert exp.build_model("jepa", obs_dim, exp.AtariConfig.quick()).init == "cca"


def test_splits_are_standardised_stacks(tmp_path):
    cfg = exp.AtariConfig.quick(cache_dir=str(tmp_path), progress=False)
    train, test = exp.make_splits(cfg, 1.0, 0)
    k, s = cfg.context_frames, cfg.size
    assert train.context.shape[1] == k * s * s == train.target.shape[1]
    assert train.labels.shape == (len(train), 2, 4) and train.visible.dtype == torch.bool
    assert abs(float(train.context.mean())) < 0.05
    assert abs(float(train.context.std()) - 1.0) < 0.05
    # the target starts one frame after the context ends (no shared frames)
    ctx = train.context.reshape(-1, k, s, s)
    tgt = train.target.reshape(-1, k, s, s)
    torch.testing.assert_close(ctx[1:2, -1], tgt[0:1, 0] if k == 1 else ctx[2:3, -2])
    assert not torch.equal(ctx[0, -1], tgt[0, 0])
    # labels at t+1 are the next row's labels at t (within an episode)
    same = train.episode[:-1] == train.episode[1:]
    assert 0 < (~same).sum() < len(train.episode) // 10
    torch.testing.assert_close(train.labels[:-1, 1][same], train.labels[1:, 0][same])


def test_quick_run_writes_the_run_folder(tmp_path, capsys):
    from bjepa.cli import main

    out = tmp_path / "run"
    rc = main(["atari", "--quick", "--models", "vjepa,jepa,vae,ar", "--sigmas", "0,1",
               "--steps", "4", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
               "--no-progress"])
    assert rc == 0
    for name in ["config.json", "metrics.jsonl", "results.csv", "results.json",
                 "r2_vs_sigma.png", "r2_by_label.png", "frames.png"]:
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 4 * 2
    assert {"model", "sigma", "seed", "linear_r2", "mlp_r2", "linear_ball_x",
            "mlp_player_y", "train_seconds", "restart", "selection_score"} <= set(rows[0])
    ckpts = sorted((out / "checkpoints").glob("*.pt"))
    assert len(ckpts) == 8
    # a checkpoint rebuilds its model even where its conv geometry was never registered
    cfg = json.loads((out / "config.json").read_text())
    ENCODERS.pop(cfg["encoder"])
    DECODERS.pop(cfg["encoder"])
    model = exp.load_atari_model(next(p for p in ckpts if p.name.startswith("vae-")))
    assert isinstance(model, VAE) and cfg["encoder"] in ENCODERS
    text = capsys.readouterr().out
    assert "linear R2" in text and "VJEPA − VAE" in text


def test_restarts_keep_the_best_scored_model(tmp_path):
    cfg = exp.AtariConfig.quick(models=["vjepa", "vae"], sigmas=[1.0], steps=3, restarts=3,
                                cache_dir=str(tmp_path), progress=False)
    rows = exp.run(cfg)
    for row in rows:
        scores = [float(v) for v in row["restart_scores"].split()]
        assert len(scores) == 3
        assert row["selection_score"] == pytest.approx(max(scores), rel=1e-3)
        assert scores[row["restart"]] == pytest.approx(max(scores), rel=1e-3)
    with pytest.raises(ValueError, match="restarts"):
        exp.AtariConfig.quick(restarts=0).validate()


def test_checkpoint_reloads_a_conv_model(tmp_path):
    from bjepa.inference.checkpoint import load_model, save_checkpoint

    name = register_conv(2, 20, channels=(4, 8, 8))
    m = VAE(2 * 20 * 20, 3, encoder=name, hidden_dim=16)
    save_checkpoint(tmp_path / "m.pt", m)
    m2 = load_model(tmp_path / "m.pt")
    x = torch.randn(4, 2 * 20 * 20)
    torch.testing.assert_close(m2.encode(x), m.encode(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_quick_run_on_cuda(tmp_path):
    cfg = exp.AtariConfig.quick(models=["vjepa", "vae"], sigmas=[1.0], steps=3,
                                cache_dir=str(tmp_path), device="cuda", progress=False)
    rows = exp.run(cfg)
    assert len(rows) == 2 and all(np.isfinite(r["final_loss"]) for r in rows)


def test_cli_refuses_resume(tmp_path, capsys):
    from bjepa.cli import main

    assert main(["atari", "--quick", "--resume", "--out", str(tmp_path / "a")]) == 2
    assert "--resume is not supported" in capsys.readouterr().err
