"""Atari with actions: recorded actions, their alignment with the frames, action-conditioned
VJEPA/BJEPA on frame stacks, probes of the predicted latent.

See docs/atari.md#with-actions."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py")

from bjepa.data import atari  # noqa: E402
from bjepa.experiments import atari as exp  # noqa: E402
from bjepa.models import ActionBJEPA, ActionVJEPA  # noqa: E402


@pytest.fixture(scope="module")
def pong():
    return atari.generate("pong", size=36, episodes=2, max_episode_steps=300, seed=5,
                          progress=False)


def test_action_names_and_one_hot():
    names = atari.action_names("pong")
    assert names == ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")
    u = atari.one_hot(np.array([[0, 5], [2, 3]]), 6)
    assert u.shape == (2, 2, 6) and u.dtype == np.float32
    np.testing.assert_array_equal(u.argmax(-1), [[0, 5], [2, 3]])
    assert np.all(u.sum(-1) == 1)
    with pytest.raises(ValueError, match="actions must lie in 0..5"):
        atari.one_hot(np.array([6]), 6)
    with pytest.raises(ValueError, match="integer"):
        atari.one_hot(np.array([0.5]), 6)
    with pytest.raises(ValueError, match="n_actions"):
        atari.one_hot(np.array([0]), 0)


def test_recorded_actions_move_the_players_paddle(pong):
    """actions[t] is the action whose frames end in frame t: RIGHT moves the player's paddle up
    (RAM y falls), LEFT down, over the next two frames; the same check with the actions shifted
    by a few steps finds no such effect (the check can fail)."""
    names = pong.action_names
    up = np.isin(pong.actions, [names.index("RIGHT"), names.index("RIGHTFIRE")])
    down = np.isin(pong.actions, [names.index("LEFT"), names.index("LEFTFIRE")])
    y, ep = pong.labels[:, 0].astype(float), pong.episode
    t = np.arange(1, len(y) - 1)
    t = t[(ep[t - 1] == ep[t + 1]) & (y[t - 1] > 40) & (y[t - 1] < 200)]  # off the walls
    move = y[t + 1] - y[t - 1]
    assert move[up[t]].mean() < -8 and move[down[t]].mean() > 8
    assert abs(move[~up[t] & ~down[t]].mean()) < 4
    # actions recorded ten steps later do not explain this move
    late = np.roll(up, -10)[t], np.roll(down, -10)[t]
    assert abs(move[late[0]].mean() - move[late[1]].mean()) < 12
    assert pong.meta["action_names"] == list(names)


def test_actions_survive_save_load_and_select(pong, tmp_path):
    path = pong.save(tmp_path / "pong.npz")
    back = atari.AtariFrames.load(path)
    np.testing.assert_array_equal(back.actions, pong.actions)
    assert back.actions.dtype == np.int64 and back.n_actions == 6
    assert back.action_names == pong.action_names
    train, test = back.split(test_episodes=1)
    np.testing.assert_array_equal(np.concatenate([train.actions, test.actions]), pong.actions)
    # written without pickles: a plain numpy load with pickles refused reads every field
    with np.load(path, allow_pickle=False) as z:
        assert z["actions"].shape == (len(pong),)


def test_splits_carry_the_actions_between_context_and_target(tmp_path):
    cfg = exp.AtariConfig.quick(cache_dir=str(tmp_path), progress=False, past_actions=1)
    train, _ = exp.make_splits(cfg, 0.0, 0)
    raw, _, _ = exp.load_raw(cfg, 0)
    k, p = cfg.context_frames, cfg.past_actions
    t = exp._stack_index(raw.episode, k)
    assert train.actions.shape == (len(t), p + k) and train.n_actions == 6
    # columns: a_t (the last context frame's), then a_{t+1} .. a_{t+k} (the target's frames)
    for i in range(p + k):
        np.testing.assert_array_equal(train.actions[:, i].numpy(), raw.actions[t + 1 - p + i])
    u = train.action_inputs()
    assert u.shape == (len(t), (p + k) * 6)
    np.testing.assert_array_equal(u.reshape(len(t), p + k, 6).argmax(-1), train.actions)
    # the target starts at frame t+1: its first frame is the next row's last context frame
    s = cfg.size
    same = train.episode[:-1] == train.episode[1:]
    ctx = train.context.reshape(-1, k, s, s)
    tgt = train.target.reshape(-1, k, s, s)
    torch.testing.assert_close(tgt[:-1, 0][same], ctx[1:, -1][same])


def test_action_config_validation_names_the_fix():
    with pytest.raises(ValueError, match="--models vjepa,bjepa"):
        exp.AtariConfig(actions=True).validate()  # vae, ar and jepa have no action variant
    exp.AtariConfig(actions=True, models=["vjepa", "bjepa"]).validate()
    with pytest.raises(ValueError, match="past_actions"):
        exp.AtariConfig(actions=True, models=["vjepa"], past_actions=3).validate()
    with pytest.raises(ValueError, match="past_actions"):
        exp.AtariConfig(past_actions=-1).validate()
    with pytest.raises(ValueError, match="actions must be True or False"):
        exp.AtariConfig(actions="yes", models=["vjepa"]).validate()
    cfg = exp.AtariConfig.quick(actions=True, models=["vjepa"])
    with pytest.raises(ValueError, match="action_dim is required"):
        exp.build_model("vjepa", 2 * 36 * 36, cfg)
    with pytest.raises(ValueError, match="no action-conditioned variant"):
        exp.build_model("vae", 2 * 36 * 36, cfg, 18)


def test_action_models_on_frame_stacks_shapes(tmp_path):
    cfg = exp.AtariConfig.quick(actions=True, models=["vjepa", "bjepa"],
                                cache_dir=str(tmp_path), progress=False)
    train, _ = exp.make_splits(cfg, 1.0, 0)
    obs_dim, action_dim = train.context.shape[1], train.action_inputs().shape[1]
    for name, cls in [("vjepa", ActionVJEPA), ("bjepa", ActionBJEPA)]:
        m = exp.build_model(name, obs_dim, cfg, action_dim)
        assert type(m) is cls and exp.is_action_model(m)
        assert m.obs_dim == obs_dim and m.context_dim == obs_dim + action_dim
        ctx = exp.model_context(m, train)
        assert ctx.shape == (len(train), obs_dim + action_dim)
        assert m.encode(train.context[:5]).shape == (5, cfg.latent_dim)
        assert m.predict(ctx[:5]).mean.shape == (5, cfg.latent_dim)
        assert exp.predict_mean(m, train).shape == (len(train), cfg.latent_dim)
        # the actions change the prediction (the predictor reads them)
        flipped = ctx.clone()
        flipped[:, obs_dim:] = flipped[:, obs_dim:].roll(1, dims=1)
        assert not torch.allclose(m.predict(ctx[:20]).mean, m.predict(flipped[:20]).mean)
        with pytest.raises(ValueError, match="model.pack"):
            m.predict(train.context[:5])
    plain = exp.build_model("vjepa", obs_dim, exp.AtariConfig.quick())
    assert not exp.is_action_model(plain)
    assert exp.model_context(plain, train) is train.context


def test_action_selection_score_sees_the_actions():
    """The restart score of an action model is I([z_C, u]; z_T): with targets that depend
    on the actions only, the actions carry the information."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 6, generator=g)
    u = torch.nn.functional.one_hot(torch.randint(3, (600,), generator=g), 3).float()
    m = ActionVJEPA(6, 2, action_dim=3, init="random")
    y = torch.randn(600, 6, generator=g) * 0.1
    y[:, :3] += 3 * u
    with_u = m.selection_score(m.pack(x, u), y)
    shuffled = m.selection_score(m.pack(x, u[torch.randperm(600, generator=g)]), y)
    assert with_u > 0.5 > shuffled >= 0


def test_quick_run_with_actions_probes_and_reloads(tmp_path, capsys):
    from bjepa.cli import main

    out = tmp_path / "run"
    rc = main(["atari", "--quick", "--actions", "--sigmas", "1", "--steps", "4",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == ["vjepa", "bjepa"]
    assert all(r["actions"] is True for r in rows)
    for key in ["linear_player_y", "mlp_player_y", "frame_linear_player_y",
                "pred_linear_player_y", "pred_linear_r2", "frame_linear_r2"]:
        assert all(np.isfinite(r[key]) for r in rows), key
    assert json.loads((out / "config.json").read_text())["actions"] is True
    assert (out / "r2_player_y.png").stat().st_size > 0
    ckpt = out / "checkpoints" / "vjepa-actions-tv-sigma1-seed0.pt"
    model = exp.load_atari_model(ckpt)
    assert isinstance(model, ActionVJEPA) and model.action_dim == 3 * 6
    text = capsys.readouterr().out
    assert "player_y linear" in text and "actions a_t+0..a_t+2" in text
    # the summary keeps runs with and without actions apart
    plain = [{**r, "actions": False, "linear_player_y": 0.0} for r in rows]
    summary = exp.summarise_label(rows + plain, "player_y")
    assert {(s["model"], s["variant"]) for s in summary} == {
        ("vjepa", "actions"), ("vjepa", "no actions"), ("bjepa", "actions"),
        ("bjepa", "no actions")}
    with pytest.raises(ValueError, match="no probe of label"):
        exp.summarise_label(rows, "paddle")


def test_probe_reads_the_prediction_only_for_latent_predictors(tmp_path):
    cfg = exp.AtariConfig.quick(models=["vae"], sigmas=[1.0], steps=2, cache_dir=str(tmp_path),
                                progress=False)
    rows = exp.run(cfg)
    assert rows[0]["actions"] is False
    assert np.isnan(rows[0]["pred_linear_player_y"]) and np.isfinite(
        rows[0]["frame_linear_player_y"])


def test_controllable_directions_find_what_the_actions_move():
    """Of two next-step features that both persist, only one is moved by the action: the partial
    CCA given the current features picks that one; a plain CCA cannot tell them apart."""
    from bjepa.models.action import controllable_directions

    g = torch.Generator().manual_seed(0)
    n = 4000
    s = torch.randn(n, 3, generator=g)                     # current state, seen in a
    u = torch.randn(n, 1, generator=g)                     # the action
    nxt = s.clone()
    nxt[:, 1] += u[:, 0]                                   # the action moves state 1 only
    nxt += 0.05 * torch.randn(n, 3, generator=g)
    mix = torch.randn(3, 3, generator=g)
    a, b = s @ mix, nxt @ mix                               # features mix the state
    w, rho = controllable_directions(a, b, u, 1)
    assert w.shape == (1, 3) and rho[0] > 0.9
    direction = w @ mix.T                                   # the direction in state space
    assert direction[0, 1].abs() > 5 * direction[0, [0, 2]].abs().max()
    assert float((b @ w.T).std()) == pytest.approx(1.0, rel=1e-3)
    # with actions that move nothing, the partial correlations are at chance
    _, rho0 = controllable_directions(a, s @ mix + 0.05 * torch.randn(n, 3, generator=g), u, 1)
    assert rho0[0] < 0.1


def test_action_latents_start_and_validation(tmp_path):
    m = ActionVJEPA(6, 3, action_dim=2, action_latents=1)
    assert m.hparams["action_latents"] == 1
    assert "action_latents" not in ActionVJEPA(6, 3, action_dim=2).hparams
    for bad in (-1, 4, True):
        with pytest.raises(ValueError, match="action_latents"):
            ActionVJEPA(6, 3, action_dim=2, action_latents=bad)
    with pytest.raises(ValueError, match="action_latents"):
        exp.AtariConfig(actions=True, models=["vjepa"], action_latents=9).validate()
    cfg = exp.AtariConfig.quick(actions=True, models=["bjepa"], action_latents=2,
                                cache_dir=str(tmp_path), progress=False)
    train, _ = exp.make_splits(cfg, 0.0, 0)
    model = exp.build_model("bjepa", train.context.shape[1], cfg, train.action_inputs().shape[1])
    assert model.action_latents == 2
    assert not model._started
    assert model.prepare(exp.model_context(model, train), train.target)
    assert model._started  # the hook guard knows the data start ran
    rho = model.init_from_data(exp.model_context(model, train), train.target)
    assert rho.shape == (cfg.latent_dim,) and torch.isfinite(rho).all()
