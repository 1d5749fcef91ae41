"""Natural video: Atari frames with a "noisy TV" distractor, convolutional encoders
and probes of the frozen representations to the console-RAM ground truth.

See docs/method.md#natural-video-atari.

For each distractor strength σ and seed: record (or load from the cache) episodes of the game,
add the distractor, standardise with training statistics, cut frame stacks, train every model
on ``(context, target)`` stack pairs with mini-batch SVI, then probe the frozen representation
with a linear and a small MLP probe to the RAM labels, on separate test episodes.

**Stacks.** The context is the ``k`` frames ending at ``t``; the target is the *next* ``k``
frames ``t+1..t+k`` (not the stack shifted by one: overlapping stacks would let a JEPA
"predict" the distractor in the frames the context and the target share). The VAE reconstructs
the context stack, the AR model predicts the target stack; both decode all ``k`` frames with
the transposed-convolution decoder. Probes follow Noisy TV: a representation of the context
ending at ``t`` is probed against the labels at ``t + model.probe_offset`` (``t`` for the VAE,
``t+1`` for the predictive models), on rows where the labelled object is on screen.

**Actions** (``AtariConfig.actions``). VJEPA and BJEPA become
:class:`~bjepa.models.action.ActionVJEPA` / :class:`~bjepa.models.action.ActionBJEPA`: the
encoders still see frames only, and the predictor of the target latent reads ``[z_C, u]`` with
``u`` the one-hot actions ``a_{t+1-p} .. a_{t+k}`` (``p = past_actions``; ``a_s`` is the action
repeated over the frames that end in frame ``s``): the actions that produce the target frames
and, with ``p >= 1``, the last ones of the context, whose effect on Pong's paddle lags by a step.
Besides the usual probes, :func:`probe` reads two more views with a linear probe: the context
latent against the labels at ``t`` (``frame_linear_*``, what the last context frame shows) and
the *predicted* next latent (the predictor's mean, with the actions when the model has them)
against the labels at ``t+1`` (``pred_linear_*``).

Used by ``bjepa atari`` and ``examples/atari.py``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bjepa._util import nanmean, torch_threads
from bjepa._validation import (
    check_choice,
    check_nonnegative,
    check_positive,
    check_positive_int,
)
from bjepa.data import atari as atari_data
from bjepa.experiments.grid import GridPoint, format_rows, grid_points, run_grid, summarise_rows
from bjepa.inference import fit_restarts
from bjepa.inference.checkpoint import save_checkpoint
from bjepa.metrics import linear_probe_r2, r2_score
from bjepa.models import registry
from bjepa.models.action import ActionBJEPA, ActionVJEPA
from bjepa.models.conv import conv_encoder_name, register_conv
from bjepa.models.keypoints import keypoint_spec
from bjepa.runs import RunFolder

__all__ = [
    "ACTION_MODELS",
    "MODEL_NAMES",
    "AtariConfig",
    "AtariSplit",
    "available_models",
    "build_model",
    "compare",
    "encode",
    "format_label_table",
    "format_table",
    "is_action_model",
    "load_atari_model",
    "load_raw",
    "make_splits",
    "mlp_probe_r2",
    "model_context",
    "plot_frames",
    "plot_label_vs_sigma",
    "plot_r2_by_label",
    "plot_r2_vs_sigma",
    "probe",
    "run",
    "predict_mean",
    "summarise",
    "summarise_label",
]

logger = logging.getLogger(__name__)

#: the models an Atari run trains by default (any registered model may be asked for)
MODEL_NAMES = ["vjepa", "bjepa", "jepa", "vae", "ar"]
#: the models that have an action-conditioned variant (``AtariConfig.actions``)
ACTION_MODELS = {"vjepa": ActionVJEPA, "bjepa": ActionBJEPA}
#: encoder families an Atari run can use (``AtariConfig.encoder_kind``)
ENCODER_KINDS = ["conv", "keypoints"]


def available_models() -> list[str]:
    """The model names an Atari run can train (every registered model)."""
    return registry.available_models()


@dataclass
class AtariConfig:
    """Everything that defines an Atari run (dumped as ``config.json``).

    Data: ``game``, ``size`` (frame side in pixels), ``frame_skip``, ``sticky`` (policy),
    ``train_episodes``/``test_episodes`` of at most ``episode_steps`` agent steps each.
    Distractor: ``distractor`` in ``"none" | "tv" | "ar1" | "game"`` at strengths ``sigmas``
    (pixel units: frames lie in [0, 1]), with ``patch``/``cell``/``rho``/``other_game``.
    Models: ``context_frames`` (k), ``latent_dim``, ``hidden_dim``, conv ``channels``,
    VJEPA/BJEPA ``beta``, ``tau``, the start ``init`` of the three predictive models (``"cca"``:
    first convolution and last layer at canonical directions between context and target;
    ``"random"``), the VAE/AR ``vae_beta``. Training: ``steps`` of ``batch_size`` with Adam at
    ``lr``; every model is trained ``restarts`` times from different initial weights and the
    restart with the best label-free ``selection_score`` is kept
    (:func:`bjepa.inference.fit_restarts`). Probes: an MLP with ``probe_hidden`` units trained
    for ``probe_steps`` full-batch Adam steps. ``actions``: VJEPA and BJEPA are
    action-conditioned (their predictor reads the one-hot actions ``a_{t+1-past_actions} ..
    a_{t+k}``; the other models have no such variant and are refused); ``action_latents`` of
    their ``latent_dim`` directions start at the features the actions control
    (:func:`bjepa.models.action.controllable_directions`). ``encoder_kind``: ``"conv"``, the
    DQN-style CNN (``channels``, ``hidden_dim``), or ``"keypoints"``, one convolution of
    ``keypoint_channels`` filters read out by a spatial soft-argmax at ``keypoint_temperature``
    (:mod:`bjepa.models.keypoints`; ``channels`` and ``hidden_dim`` then do not apply to the
    encoder, ``hidden_dim`` still sizes the predictor). ``threads`` sets
    ``torch.set_num_threads`` for the run (``None`` leaves it).
    """

    models: list[str] = field(default_factory=lambda: list(MODEL_NAMES))
    game: str = "pong"
    distractor: str = "tv"
    sigmas: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    size: int = 48
    frame_skip: int = 4
    sticky: float = 0.25
    train_episodes: int = 12
    test_episodes: int = 4
    episode_steps: int = 500
    context_frames: int = 2
    patch: float = 0.5
    cell: int = 4
    rho: float = 0.9
    other_game: str = "space_invaders"
    latent_dim: int = 8
    hidden_dim: int = 128
    channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    encoder_kind: str = "conv"
    keypoint_channels: int = 64
    keypoint_temperature: float = 0.2
    beta: float = 0.01
    tau: float | str = 0.99
    init: str = "cca"
    actions: bool = False
    past_actions: int = 1
    action_latents: int = 0
    vae_beta: float = 1.0
    steps: int = 600
    restarts: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    probe_hidden: int = 64
    probe_steps: int = 500
    cache_dir: str | None = None
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> AtariConfig:
        """A tiny configuration for smoke tests (seconds, not a result)."""
        base: dict[str, Any] = dict(sigmas=[0.0, 1.0], seeds=[0], size=36, train_episodes=2,
                                    test_episodes=1, episode_steps=80, steps=20, batch_size=32,
                                    latent_dim=4, hidden_dim=32, channels=[8, 16, 16],
                                    probe_steps=50, probe_hidden=16)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> AtariConfig:
        if not self.models:
            raise ValueError("models must name at least one model")
        for m in self.models:
            check_choice("model", m, available_models())
        if not isinstance(self.actions, bool):
            raise ValueError(f"actions must be True or False, got {self.actions!r}")
        if self.actions:
            other = [m for m in self.models if m not in ACTION_MODELS]
            if other:
                raise ValueError(f"actions=True needs models with an action-conditioned "
                                 f"variant ({', '.join(ACTION_MODELS)}); {', '.join(other)} "
                                 "have none: drop them from models (--models vjepa,bjepa)")
        atari_data.game_spec(self.game)
        if not atari_data.game_spec(self.game).labels:
            raise ValueError(f"game {self.game!r} has no labels to probe; declare them with "
                             "bjepa.data.atari.register_game(name, labels={...})")
        check_choice("distractor", self.distractor, atari_data.DISTRACTORS)
        if self.distractor == "game":
            atari_data.game_spec(self.other_game)
        if not self.sigmas:
            raise ValueError("sigmas must list at least one distractor strength")
        for s in self.sigmas:
            check_nonnegative("sigma", s)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        for name in ["size", "frame_skip", "train_episodes", "test_episodes", "episode_steps",
                     "context_frames", "cell", "latent_dim", "hidden_dim", "steps", "restarts",
                     "batch_size", "probe_hidden", "probe_steps"]:
            check_positive_int(name, getattr(self, name))
        if isinstance(self.past_actions, bool) or not isinstance(self.past_actions, int) \
                or not 0 <= self.past_actions <= self.context_frames:
            raise ValueError(f"past_actions must be an int in 0..context_frames "
                             f"({self.context_frames}; the stacks then keep the same rows with "
                             f"and without actions), got {self.past_actions!r}")
        if isinstance(self.action_latents, bool) or not isinstance(self.action_latents, int) \
                or not 0 <= self.action_latents <= self.latent_dim:
            raise ValueError(f"action_latents must be an int in 0..latent_dim "
                             f"({self.latent_dim}), got {self.action_latents!r}")
        if self.episode_steps < 2 * self.context_frames + 1:
            raise ValueError(f"episode_steps must be > 2·context_frames, got "
                             f"{self.episode_steps}")
        if len(self.channels) != 3:
            raise ValueError(f"channels must list 3 conv widths, got {self.channels}")
        check_positive("lr", self.lr)
        check_choice("init", self.init, ["cca", "random"])
        check_choice("encoder_kind", self.encoder_kind, ENCODER_KINDS)
        check_positive_int("keypoint_channels", self.keypoint_channels)
        check_positive("keypoint_temperature", self.keypoint_temperature)
        check_nonnegative("beta", self.beta)
        check_nonnegative("vae_beta", self.vae_beta)
        if self.threads is not None:
            check_positive_int("threads", self.threads)
        return self

    @property
    def encoder(self) -> str:
        """The encoder spec: the registered conv encoder name for this geometry (see
        :mod:`bjepa.models.conv`), or the keypoint encoder's spec (the geometry is read from
        the stack width; ``frames`` pins ``k``)."""
        if self.encoder_kind == "keypoints":
            return keypoint_spec(self.keypoint_channels, self.keypoint_temperature,
                                 frames=self.context_frames)
        return conv_encoder_name(self.context_frames, self.size, channels=self.channels)

    def data_kwargs(self, seed: int) -> dict[str, Any]:
        return dict(size=self.size, episodes=self.train_episodes + self.test_episodes,
                    max_episode_steps=self.episode_steps, frame_skip=self.frame_skip,
                    sticky=self.sticky, seed=seed)


# -- data ----------------------------------------------------------------------------------
@dataclass
class AtariSplit:
    """Frame-stack pairs of one split, ready for :func:`bjepa.inference.fit`.

    :ivar context: ``(N, k·H·W)`` stacks ``x_{t-k+1..t}`` (standardised).
    :ivar target: ``(N, k·H·W)`` stacks ``x_{t+1..t+k}``.
    :ivar labels: ``(N, 2, L)`` ground truth at ``t`` (``[:, 0]``) and ``t+1`` (``[:, 1]``).
    :ivar visible: ``(N, 2, L)`` whether each labelled object is on screen then.
    :ivar episode: ``(N,)`` the episode each stack comes from.
    :ivar actions: ``(N, p + k)`` action indices ``a_{t+1-p} .. a_{t+k}`` (``p`` =
        ``past_actions``): the actions that produce the target frames, after the last ``p`` of
        the context.
    :ivar n_actions: size of the game's minimal action set.
    """

    context: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor
    visible: torch.Tensor
    episode: torch.Tensor
    label_names: tuple[str, ...]
    frames: int
    size: int
    actions: torch.Tensor | None = None
    n_actions: int = 0

    def __len__(self) -> int:
        return int(self.context.shape[0])

    def action_inputs(self) -> torch.Tensor:
        """``(N, (p + k) · n_actions)`` float32: the one-hot actions of each pair, flat (the
        ``u`` an action-conditioned model packs with the context)."""
        if self.actions is None:
            raise ValueError("this split holds no actions; build it with make_splits")
        u = atari_data.one_hot(self.actions.numpy(), self.n_actions)
        return torch.from_numpy(u.reshape(len(self), -1))


def _stack_index(episode: np.ndarray, k: int) -> np.ndarray:
    """Times ``t`` whose frames ``t-k+1 .. t+k`` all lie in one episode."""
    n = len(episode)
    t = np.arange(k - 1, n - k)
    same = episode[t - k + 1] == episode[t + k]
    return t[same]


def _stack(obs: np.ndarray, frames: atari_data.AtariFrames, k: int,
           past_actions: int = 1) -> AtariSplit:
    t = _stack_index(frames.episode, k)
    acts = np.stack([frames.actions[t + 1 - past_actions + i] for i in range(past_actions + k)],
                    axis=1)
    ctx = np.stack([obs[t - k + 1 + i] for i in range(k)], axis=1)
    tgt = np.stack([obs[t + 1 + i] for i in range(k)], axis=1)
    labels = np.stack([frames.labels[t], frames.labels[t + 1]], axis=1)
    vis = np.stack([frames.visible[t], frames.visible[t + 1]], axis=1)
    n = len(t)
    return AtariSplit(context=torch.from_numpy(ctx.reshape(n, -1)),
                      target=torch.from_numpy(tgt.reshape(n, -1)),
                      labels=torch.from_numpy(labels), visible=torch.from_numpy(vis),
                      episode=torch.from_numpy(frames.episode[t]),
                      label_names=frames.label_names, frames=k, size=frames.size,
                      actions=torch.from_numpy(acts.astype(np.int64)),
                      n_actions=frames.n_actions)


def _distractor_seed(seed: int, sigma: float, split: str) -> int:
    return (seed * 1_000_003 + round(sigma * 1000) * 7919 + (0 if split == "train" else 1)) \
        % (2**32)


def load_raw(cfg: AtariConfig, seed: int
             ) -> tuple[atari_data.AtariFrames, atari_data.AtariFrames,
                        tuple[atari_data.AtariFrames, atari_data.AtariFrames] | None]:
    """``(train, test, other)`` raw frames for ``seed`` (``other``: the blended game's split)."""
    data = atari_data.load_frames(cfg.game, cache_dir=cfg.cache_dir, progress=cfg.progress,
                                  **cfg.data_kwargs(seed))
    train, test = data.split(cfg.test_episodes)
    other = None
    if cfg.distractor == "game":
        o = atari_data.load_frames(cfg.other_game, cache_dir=cfg.cache_dir,
                                   progress=cfg.progress, **cfg.data_kwargs(seed + 10_000))
        other = o.split(cfg.test_episodes)
    return train, test, other


def make_splits(cfg: AtariConfig, sigma: float, seed: int,
                raw: tuple[Any, Any, Any] | None = None) -> tuple[AtariSplit, AtariSplit]:
    """Distracted, standardised frame stacks ``(train, test)`` for one σ and seed.

    Observations are ``(frame/255 + σ·u − m) / s`` with the per-pixel mean ``m`` and the
    overall std ``s`` of the distracted *training* frames.
    """
    train, test, other = raw if raw is not None else load_raw(cfg, seed)
    kw = dict(patch=cfg.patch, cell=cfg.cell, rho=cfg.rho)
    xs = []
    for split, frames, oth in [("train", train, other[0] if other else None),
                               ("test", test, other[1] if other else None)]:
        xs.append(atari_data.distracted(frames, cfg.distractor, sigma,
                                        seed=_distractor_seed(seed, sigma, split), other=oth,
                                        **kw))
    mean = xs[0].mean(0)
    scale = max(float(xs[0].std()), 1e-6)
    return (_stack((xs[0] - mean) / scale, train, cfg.context_frames, cfg.past_actions),
            _stack((xs[1] - mean) / scale, test, cfg.context_frames, cfg.past_actions))


# -- models --------------------------------------------------------------------------------
def build_model(name: str, obs_dim: int, cfg: AtariConfig, action_dim: int | None = None
                ) -> nn.Module:
    """Construct model ``name`` (any registered model) with the run's conv encoder and shared
    settings; the reconstruction baselines take ``cfg.vae_beta`` as their β. With
    ``cfg.actions``, VJEPA and BJEPA are their action-conditioned variants reading
    ``action_dim`` action inputs (:meth:`AtariSplit.action_inputs`; ``obs_dim`` stays the width
    of a frame stack)."""
    settings = dict(encoder=cfg.encoder, hidden_dim=cfg.hidden_dim, beta=cfg.beta, tau=cfg.tau,
                    init=cfg.init)
    if cfg.actions:
        if name not in ACTION_MODELS:
            raise ValueError(f"model {name!r} has no action-conditioned variant; with actions "
                             f"use one of {', '.join(ACTION_MODELS)}")
        if action_dim is None:
            raise ValueError("action_dim is required when cfg.actions is set (the width of "
                             "AtariSplit.action_inputs())")
        return ACTION_MODELS[name](obs_dim, cfg.latent_dim, action_dim=action_dim,
                                   action_latents=cfg.action_latents, **settings)
    if name in ("vae", "ar"):
        settings["beta"] = cfg.vae_beta
        return registry.build_model(name, obs_dim, cfg.latent_dim, settings=settings,
                                    beta=cfg.vae_beta)
    return registry.build_model(name, obs_dim, cfg.latent_dim, settings=settings)


def encode(model: Any, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``model.encode`` in chunks on the model's device; returns a CPU tensor."""
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        return torch.cat([model.encode(x[i:i + chunk].to(dev)).cpu()
                          for i in range(0, len(x), chunk)])
    finally:
        model.train(was)


def is_action_model(model: Any) -> bool:
    """Whether ``model`` reads actions (an :class:`~bjepa.models.action.ActionVJEPA`)."""
    return isinstance(model, ActionVJEPA)


def model_context(model: Any, split: AtariSplit) -> torch.Tensor:
    """What ``model`` trains on as context: the frame stacks, packed with the one-hot actions
    for an action-conditioned model."""
    if is_action_model(model):
        return model.pack(split.context, split.action_inputs())
    return split.context


def predict_mean(model: Any, split: AtariSplit, chunk: int = 1024) -> torch.Tensor | None:
    """The mean of the predictor's distribution over the target latent for every pair (with
    the actions when the model reads them), on the CPU; ``None`` for a model without a latent
    predictor (VAE, AR)."""
    if not hasattr(model, "predictive_dist") or not hasattr(model, "predict"):
        return None
    dev = next(model.parameters()).device
    ctx = model_context(model, split)
    was = model.training
    model.eval()
    try:
        return torch.cat([model.predict(ctx[i:i + chunk].to(dev)).mean.cpu()
                          for i in range(0, len(ctx), chunk)])
    finally:
        model.train(was)


def load_atari_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a checkpoint written by :func:`run`, registering its conv encoder
    geometry (stored in the checkpoint's ``meta``) first so a fresh process can load it."""
    from bjepa.inference.checkpoint import load_checkpoint, load_model

    meta = load_checkpoint(path, map_location)["meta"]
    if meta.get("data") != "atari":
        raise ValueError(f"{path} is not an Atari checkpoint (meta data={meta.get('data')!r})")
    # "keypoints:..." specs need no registration (importing this module registers the family)
    if meta["encoder"] != "conv" and not meta["encoder"].startswith("keypoints"):
        register_conv(meta["context_frames"], meta["size"], channels=meta["channels"],
                      name=meta["encoder"])
    return load_model(path, map_location)


# -- probes --------------------------------------------------------------------------------
def mlp_probe_r2(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor,
                 y_test: torch.Tensor, *, mask_train: torch.Tensor | None = None,
                 mask_test: torch.Tensor | None = None, hidden: int = 64, steps: int = 500,
                 lr: float = 3e-3, seed: int = 0) -> torch.Tensor:
    """Test R² per column of ``y`` of a two-hidden-layer MLP probe (ReLU, ``hidden`` units)
    trained full-batch with Adam on standardised inputs and targets.

    ``mask_*`` (same shape as ``y``, bool) drop entries from the loss and from the R²; columns
    with no valid test entry give NaN.
    """
    check_positive_int("hidden", hidden)
    check_positive_int("steps", steps)
    z_train, y_train, z_test, y_test = (t.detach().float().cpu()
                                        for t in (z_train, y_train, z_test, y_test))
    mask_train = torch.ones_like(y_train, dtype=torch.bool) if mask_train is None else mask_train
    mask_test = torch.ones_like(y_test, dtype=torch.bool) if mask_test is None else mask_test
    zm, zs = z_train.mean(0), z_train.std(0).clamp_min(1e-6)
    w = mask_train.float()
    ym = (y_train * w).sum(0) / w.sum(0).clamp_min(1)
    ys = (((y_train - ym) ** 2 * w).sum(0) / w.sum(0).clamp_min(1)).sqrt().clamp_min(1e-6)
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(z_train.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                        nn.ReLU(), nn.Linear(hidden, y_train.shape[1]))
    with torch.no_grad():
        for p in net.parameters():
            bound = 1.0 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.0
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen)
                    if bound else torch.zeros(p.shape))
    xtr, ytr = (z_train - zm) / zs, (y_train - ym) / ys
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = ((net(xtr) - ytr) ** 2 * w).sum() / w.sum().clamp_min(1)
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = net((z_test - zm) / zs) * ys + ym
    out = torch.full((y_test.shape[1],), float("nan"))
    for j in range(y_test.shape[1]):
        m = mask_test[:, j]
        if m.sum() > 1:
            out[j] = r2_score(y_test[m, j:j + 1], pred[m, j:j + 1]).float()[0]
    return out


def probe(model: Any, train: AtariSplit, test: AtariSplit, cfg: AtariConfig,
          seed: int = 0) -> dict[str, float]:
    """Linear and MLP probe test R² per label (and their means) of the frozen representation.

    The context ending at ``t`` is probed against labels at ``t + model.probe_offset``, on rows
    where the object is on screen (``linear_*``, ``mlp_*``). Two more views get a linear probe:
    the same context latent against the labels at ``t`` (``frame_linear_*``: what the last
    context frame shows), and, for models with a latent predictor, the predictor's mean
    against the labels at ``t+1`` (``pred_linear_*``; an action-conditioned model predicts with
    the actions, :func:`predict_mean`); NaN for the VAE and the AR model.
    """
    k = int(getattr(model, "probe_offset", 0))
    ztr, zte = encode(model, train.context), encode(model, test.context)
    out: dict[str, float] = {}
    lin = _linear_probes(ztr, zte, train, test, k, "linear", out)
    ytr, yte = train.labels[:, k].double(), test.labels[:, k].double()
    mtr, mte = train.visible[:, k], test.visible[:, k]
    mlp = mlp_probe_r2(ztr, ytr, zte, yte, mask_train=mtr, mask_test=mte,
                       hidden=cfg.probe_hidden, steps=cfg.probe_steps, seed=seed)
    for j, name in enumerate(train.label_names):
        out[f"mlp_{name}"] = float(mlp[j])
    out["linear_r2"] = nanmean(lin)
    out["mlp_r2"] = nanmean(mlp.tolist())
    out["frame_linear_r2"] = nanmean(_linear_probes(ztr, zte, train, test, 0, "frame_linear",
                                                    out))
    ptr = predict_mean(model, train)
    if ptr is None:
        for name in train.label_names:
            out[f"pred_linear_{name}"] = float("nan")
        out["pred_linear_r2"] = float("nan")
    else:
        pte = predict_mean(model, test)
        out["pred_linear_r2"] = nanmean(_linear_probes(ptr, pte, train, test, 1, "pred_linear",
                                                       out))
    return out


def _linear_probes(ztr: torch.Tensor, zte: torch.Tensor, train: AtariSplit, test: AtariSplit,
                   offset: int, prefix: str, out: dict[str, float]) -> list[float]:
    """Linear probe test R² of ``z`` for each label at ``t + offset`` (visible rows), written to
    ``out[f"{prefix}_{label}"]``; returns them in label order."""
    ytr, yte = train.labels[:, offset].double(), test.labels[:, offset].double()
    mtr, mte = train.visible[:, offset], test.visible[:, offset]
    lin = []
    for j, name in enumerate(train.label_names):
        a, b = mtr[:, j], mte[:, j]
        r2 = linear_probe_r2(ztr[a], ytr[a, j:j + 1], zte[b], yte[b, j:j + 1]) \
            if a.sum() > ztr.shape[1] + 1 and b.sum() > 1 else float("nan")
        out[f"{prefix}_{name}"] = float(r2)
        lin.append(float(r2))
    return lin


# -- the experiment ------------------------------------------------------------------------
def run(cfg: AtariConfig, folder: RunFolder | None = None) -> list[dict[str, Any]]:
    """Train and probe every model × σ × seed; returns one row per run.

    With a ``folder``: ``config.json``, ``metrics.jsonl``, ``checkpoints/*.pt``,
    ``results.csv/json``, ``r2_vs_sigma.png``, ``r2_by_label.png`` and ``frames.png``.
    """
    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available; use 'cpu'")
    with torch_threads(cfg.threads):
        return _run(cfg, folder)


def _run(cfg: AtariConfig, folder: RunFolder | None) -> list[dict[str, Any]]:
    if folder is not None:
        folder.write_json("config.json", {**asdict(cfg), "encoder": cfg.encoder})
    held: dict[str, Any] = {}  # the current seed's frames and (σ, seed) split, one at a time

    def run_one(p: GridPoint) -> dict[str, Any]:
        if held.get("seed") != p.seed:
            held.clear()
            held.update(seed=p.seed, raw=load_raw(cfg, p.seed))
            if folder is not None and p.seed == cfg.seeds[0]:
                plot_frames(cfg, held["raw"], folder.file("frames.png"))
        if held.get("sigma") != p.setting:
            held.pop("split", None)
            held.update(sigma=p.setting, split=make_splits(cfg, p.setting, p.seed, held["raw"]))
        return _train_one(cfg, p.model, p.setting, p.seed, *held["split"], folder)

    rows = run_grid(grid_points(cfg.models, cfg.sigmas, cfg.seeds, order="seed"),
                    run_one=run_one, progress=cfg.progress, desc="Atari runs",
                    describe=lambda r: f"linear R²={r['linear_r2']:.3f} "
                                       f"MLP R²={r['mlp_r2']:.3f}")
    held.clear()
    if folder is not None:
        folder.write_rows("results", rows)
        plot_r2_vs_sigma(rows, folder.file("r2_vs_sigma.png"))
        plot_r2_by_label(rows, folder.file("r2_by_label.png"))
        if cfg.actions:
            label = atari_data.game_spec(cfg.game).label_names[0]  # Pong: the player's paddle
            plot_label_vs_sigma(rows, label, folder.file(f"r2_{label}.png"))
    return rows


def _train_one(cfg: AtariConfig, name: str, sigma: float, seed: int, train: AtariSplit,
               test: AtariSplit, folder: RunFolder | None) -> dict[str, Any]:
    start = time.perf_counter()
    action_dim = context = None
    if cfg.actions:
        u = train.action_inputs()
        action_dim = u.shape[1]
        context = torch.cat([train.context, u], dim=1)  # the layout of ActionVJEPA.pack
    else:
        context = train.context
    best = fit_restarts(lambda: build_model(name, train.context.shape[1], cfg, action_dim),
                        context, train.target, restarts=cfg.restarts, seed=seed, steps=cfg.steps,
                        lr=cfg.lr, batch_size=cfg.batch_size, device=cfg.device,
                        progress=cfg.progress, log_every=max(cfg.steps // 50, 1),
                        metrics_path=folder.metrics_path if folder else None,
                        metrics_tags={"model": name, "sigma": sigma, "seed": seed,
                                      "distractor": cfg.distractor, "actions": cfg.actions})
    del context
    seconds = time.perf_counter() - start
    model = best.model
    scores = probe(model, train, test, cfg, seed=seed)
    row = {"model": name, "actions": cfg.actions, "distractor": cfg.distractor, "sigma": sigma,
           "seed": seed, **scores,
           "final_loss": best.history.final_loss, "restart": best.index,
           "selection_score": best.score,
           "restart_scores": " ".join(f"{r['score']:.4g}" for r in best.runs),
           "train_seconds": round(seconds, 3)}
    if folder is not None:
        save_checkpoint(
            folder.file(f"checkpoints/{name}{'-actions' if cfg.actions else ''}-"
                        f"{cfg.distractor}-sigma{sigma:g}-seed{seed}.pt"),
            model, meta={"model": name, "sigma": sigma, "seed": seed, "data": "atari",
                         "actions": cfg.actions, "past_actions": cfg.past_actions,
                         "game": cfg.game, "distractor": cfg.distractor,
                         "context_frames": cfg.context_frames, "size": cfg.size,
                         "channels": list(cfg.channels), "encoder": cfg.encoder,
                         "restart": best.index, "restarts": cfg.restarts,
                         "linear_r2": row["linear_r2"], "mlp_r2": row["mlp_r2"]})
    return row


def _order(model: str) -> int:
    names = registry.available_models()
    return names.index(model) if model in names else len(names)


# -- summaries -----------------------------------------------------------------------------
def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sd, min and max over seeds of the mean linear and MLP probe R², per model × σ."""
    return summarise_rows(rows, ("model", "sigma"), ["linear_r2", "mlp_r2"],
                          names={"linear_r2": "linear", "mlp_r2": "mlp"},
                          order=lambda k: (_order(k[0]), k[1]))


def compare(rows: Sequence[dict[str, Any]], a: str = "vjepa", b: str = "vae",
            sigma: float | None = None, probe_kind: str = "linear") -> dict[str, Any]:
    """The issue's bar: at ``sigma`` (default: the largest), model ``a``'s mean probe R² minus
    ``b``'s, against the spread over seeds (the larger of the two models' max − min ranges).
    """
    check_choice("probe_kind", probe_kind, ["linear", "mlp"])
    if sigma is None:
        sigma = max(r["sigma"] for r in rows)
    va = np.array([r[f"{probe_kind}_r2"] for r in rows
                   if r["model"] == a and r["sigma"] == sigma], dtype=float)
    vb = np.array([r[f"{probe_kind}_r2"] for r in rows
                   if r["model"] == b and r["sigma"] == sigma], dtype=float)
    if not len(va) or not len(vb):
        raise ValueError(f"rows hold no {a!r} and {b!r} results at sigma={sigma}")
    margin = float(va.mean() - vb.mean())
    spread = float(max(np.ptp(va), np.ptp(vb)))
    return {"a": a, "b": b, "sigma": sigma, "probe": probe_kind, "n_a": len(va), "n_b": len(vb),
            "mean_a": float(va.mean()), "mean_b": float(vb.mean()), "margin": margin,
            "spread": spread, "passes": bool(margin > spread and min(len(va), len(vb)) >= 3)}


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarise`'s rows."""
    return format_rows(summary, [("model", "model", "<7"), ("sigma", "sigma", ">5g")],
                       [("linear", "linear R2", ".3f"), ("mlp", "MLP R2", ".3f")], worst=True)


def _variant(row: dict[str, Any]) -> str:
    return "actions" if row.get("actions") else "no actions"


def summarise_label(rows: Sequence[dict[str, Any]], label: str = "player_y"
                    ) -> list[dict[str, Any]]:
    """Mean, sd, min and max over seeds of one label's probes, per model × actions × σ: the
    linear and MLP probes of the context latent (``linear``, ``mlp``), its linear probe for
    the last context frame (``frame``) and that of the predicted next latent (``pred``).
    Rows of runs with and without actions may be mixed (their ``actions`` column tells them
    apart)."""
    if rows and f"linear_{label}" not in rows[0]:
        raise ValueError(f"rows hold no probe of label {label!r}")
    tagged = [{**r, "variant": _variant(r)} for r in rows]
    metrics = [f"linear_{label}", f"mlp_{label}", f"frame_linear_{label}",
               f"pred_linear_{label}"]
    return summarise_rows(tagged, ("model", "variant", "sigma"), metrics,
                          names=dict(zip(metrics, ["linear", "mlp", "frame", "pred"],
                                         strict=True)),
                          order=lambda k: (_order(k[0]), k[1] == "actions", k[2]))


def format_label_table(rows: Sequence[dict[str, Any]], label: str = "player_y") -> str:
    """A plain-text table of :func:`summarise_label`."""
    return format_rows(summarise_label(rows, label),
                       [("model", "model", "<7"), ("variant", "actions", "<10"),
                        ("sigma", "sigma", ">5g")],
                       [("linear", f"{label} linear", ".3f"), ("mlp", "MLP", ".3f"),
                        ("frame", "frame t", ".3f"), ("pred", "predicted", ".3f")], worst=True)


# -- figures -------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_r2_vs_sigma(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Mean probe R² over the labels against σ: mean ± sd over seeds, linear and MLP probes."""
    plt = _pyplot()
    summary = summarise(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True, sharey=True)
    for ax, kind in zip(axes, ["linear", "mlp"], strict=True):
        for model in dict.fromkeys(s["model"] for s in summary):
            sel = [s for s in summary if s["model"] == model]
            x = np.array([s["sigma"] for s in sel])
            m = np.array([s[f"{kind}_mean"] for s in sel])
            sd = np.array([s[f"{kind}_sd"] for s in sel])
            c = registry.model_color(model)
            ax.plot(x, m, "o-", color=c, label=model.upper())
            ax.fill_between(x, m - sd, m + sd, color=c, alpha=0.2)
        ax.set(title=f"{'Linear' if kind == 'linear' else 'MLP'} probe",
               xlabel="distractor strength σ (pixel units)",
               ylabel="test R², mean over RAM labels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n_seeds = len({r["seed"] for r in rows})
    distractor = rows[0].get("distractor", "") if rows else ""
    fig.suptitle(f"Atari ({distractor} distractor): probes of frozen representations "
                 f"(mean ± sd over {n_seeds} seeds)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_label_vs_sigma(rows: Sequence[dict[str, Any]], label: str, path: str | Path, *,
                        reference: dict[str, float] | None = None) -> None:
    """One label's probe R² against σ (mean ± sd over seeds) for every model with and without
    actions (solid / dashed): the linear and MLP probes of the context latent, and the linear
    probe of the predicted next latent. ``reference``: named levels drawn as horizontal lines
    (e.g. a supervised upper bound)."""
    plt = _pyplot()
    summary = summarise_label(rows, label)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True, sharey=True)
    titles = {"linear": "linear probe of z_C (label at t+1)",
              "mlp": "MLP probe of z_C (label at t+1)",
              "pred": "linear probe of the predicted latent (t+1)"}
    for ax, kind in zip(axes, titles, strict=True):
        for key in dict.fromkeys((e["model"], e["variant"]) for e in summary):
            sel = [e for e in summary if (e["model"], e["variant"]) == key]
            m = np.array([e[f"{kind}_mean"] for e in sel])
            if not np.isfinite(m).any():
                continue
            x = np.array([e["sigma"] for e in sel])
            sd = np.nan_to_num(np.array([e[f"{kind}_sd"] for e in sel]))
            c = registry.model_color(key[0])
            ls = "-" if key[1] == "actions" else "--"
            ax.plot(x, m, "o" + ls, color=c, label=f"{key[0].upper()}, {key[1]}")
            ax.fill_between(x, m - sd, m + sd, color=c, alpha=0.15)
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        for i, (name, level) in enumerate((reference or {}).items()):
            ax.axhline(level, color=f"C{5 + i}", lw=1.2, ls="-.", label=name)
        ax.set(title=titles[kind], xlabel="distractor strength σ (pixel units)",
               ylabel=f"test R², {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center right")
    n_seeds = len({r["seed"] for r in rows})
    fig.suptitle(f"Atari: probes of {label} with and without actions "
                 f"(mean ± sd over {n_seeds} seeds)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_r2_by_label(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Per-label probe R² against σ (mean over seeds), one panel per label and probe."""
    plt = _pyplot()
    labels = [k[len("linear_"):] for k in rows[0] if k.startswith("linear_") and k != "linear_r2"]
    fig, axes = plt.subplots(2, len(labels), figsize=(3.2 * len(labels), 6),
                             constrained_layout=True, sharey=True, squeeze=False)
    models = sorted({r["model"] for r in rows}, key=_order)
    sigmas = sorted({r["sigma"] for r in rows})
    for i, kind in enumerate(["linear", "mlp"]):
        for j, label in enumerate(labels):
            ax = axes[i, j]
            for model in models:
                m = [nanmean([r[f"{kind}_{label}"] for r in rows
                               if r["model"] == model and r["sigma"] == s]) for s in sigmas]
                ax.plot(sigmas, m, "o-", color=registry.model_color(model), label=model.upper())
            ax.set_title(f"{kind}: {label}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == 1:
                ax.set_xlabel("σ")
    axes[0, 0].set_ylabel("test R²")
    axes[1, 0].set_ylabel("test R²")
    axes[0, 0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _window(frames: atari_data.AtariFrames, n: int) -> np.ndarray:
    """A mask of the first ``n`` consecutive frames of one episode with every labelled object on
    screen (the first ``n`` frames if there is none)."""
    ok = frames.visible.all(1) if frames.visible.shape[1] else np.ones(len(frames), bool)
    idx = np.arange(len(frames))
    for start in range(max(len(frames) - n + 1, 1)):
        sl = slice(start, start + n)
        if ok[sl].all() and len(set(frames.episode[sl].tolist())) == 1:
            return (idx >= start) & (idx < start + n)
    return idx < n


def plot_frames(cfg: AtariConfig, raw: tuple[Any, Any, Any] | None, path: str | Path, *,
                sigma: float | None = None, n_frames: int = 4, seed: int | None = None) -> None:
    """Example test frames: clean, then with each distractor at ``sigma`` (default: the
    largest of ``cfg.sigmas``)."""
    plt = _pyplot()
    seed = cfg.seeds[0] if seed is None else seed
    sigma = max(cfg.sigmas) if sigma is None else sigma
    _, test, other = raw if raw is not None else load_raw(cfg, seed)
    if other is None:
        o = atari_data.load_frames(cfg.other_game, cache_dir=cfg.cache_dir,
                                   progress=cfg.progress, **cfg.data_kwargs(seed + 10_000))
        other = o.split(cfg.test_episodes)
    clip = test.select(_window(test, n_frames))
    n_frames = len(clip)
    kinds = list(atari_data.DISTRACTORS)
    fig, axes = plt.subplots(len(kinds), n_frames, figsize=(1.9 * n_frames, 2.0 * len(kinds)),
                             constrained_layout=True, squeeze=False)
    for i, kind in enumerate(kinds):
        x = atari_data.distracted(clip, kind, 0.0 if kind == "none" else sigma, seed=seed + i,
                                  other=other[1], patch=cfg.patch, cell=cfg.cell, rho=cfg.rho)
        for j in range(n_frames):
            ax = axes[i, j]
            ax.imshow(x[j], cmap="gray", vmin=min(0.0, float(x.min())),
                      vmax=max(1.0, float(x.max())), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel("clean" if kind == "none" else f"{kind}, σ={sigma:g}", fontsize=9)
            if i == 0:
                ax.set_title(f"t+{j}", fontsize=9)
    fig.suptitle(f"{cfg.game}: {cfg.size}×{cfg.size} frames, frame-skip {cfg.frame_skip}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
