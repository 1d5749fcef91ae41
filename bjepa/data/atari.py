"""Atari frames with ground truth from the console RAM, plus "noisy TV" distractors.

See docs/method.md#natural-video-atari.

Frames come from the Arcade Learning Environment through ``ale-py`` (the ROMs ship in its
wheel; nothing is downloaded). One *episode* is a game from ``reset`` (plus a random number of
no-op steps) until game over or ``max_episode_steps`` agent steps, whichever comes first.

**Behaviour policy.** Uniformly random actions from the game's minimal action set with *sticky
actions*: at each agent step the previous action is repeated with probability ``sticky``
(default 0.25, the protocol of Machado et al. 2018), otherwise a fresh action is drawn. In Pong
this sweeps the player's paddle over the whole court (a stickier policy pins it to the walls).

**Frames.** Each agent step repeats the action for ``frame_skip`` emulator frames (default 4);
the recorded frame is the pixel-wise maximum of the last two grayscale screens (removes sprite
flicker), cropped to the game's play area (Pong: rows 34–193, dropping the score) and
downsampled by area averaging to ``size × size`` (default 48). The 128 bytes of console RAM are
recorded for the same step.

**Actions.** ``actions[t]`` is the index (in the game's minimal action set,
:func:`action_names`) of the action the policy took at agent step ``t``: the action repeated
over the ``frame_skip`` emulator frames that *end* in frame ``t``. Pong's paddle answers with a
lag: the move from frame ``t`` to ``t+1`` depends on ``actions[t]`` more than on
``actions[t+1]`` (``tests/test_atari_actions.py`` checks the alignment on the RAM).
:func:`one_hot` turns indices into the one-hot vectors an action-conditioned model reads.

**Labels.** A :class:`GameSpec` declares labels as RAM addresses (Pong: ``player_y = ram[51]``,
``enemy_y = ram[50]``, ``ball_x = ram[49]``, ``ball_y = ram[54]``) and optionally a
``visible(screen, ram)`` function marking, per label, whether the object is on screen (Pong:
the ball between points and a paddle above the court have RAM values but no pixels; such rows
are masked out of probes). Other games are added with :func:`register_game`, or any ALE game
is used unlabelled by name.

**Distractors** (:func:`make_distractor`) are added to frames scaled to [0, 1]:
``x_t = frame_t + σ · u_t`` with ``u_t`` of unit variance per pixel where it is non-zero —

- ``"tv"``: i.i.d. Gaussian noise in a fixed square patch (centre, side ``size/2``), fresh every
  step, drawn on a grid of ``cell × cell`` blocks (default 4 px: coarse "snow" whose few dozen
  values are worth a pixel model's latent capacity, unlike per-pixel noise that a per-pixel
  variance absorbs);
- ``"ar1"``: the same patch with temporally correlated noise,
  ``u_{t+1} = ρ u_t + sqrt(1 − ρ²) ε`` (ρ = 0.9 default, like Noisy TV's ``d_t``);
- ``"game"``: frames of another game (default Space Invaders, same policy, same geometry,
  uncropped) standardised with their own mean and std and blended over the whole frame.

Datasets of raw frames are generated once per setting and cached as ``.npz`` under
:func:`default_cache_dir` (``$BJEPA_CACHE/atari`` or ``~/.cache/bjepa/atari``); distractors are
cheap and drawn on load from their own seed.

Example::

    data = load_frames("pong", episodes=16, seed=0)      # cached after the first call
    train, test = data.split(test_episodes=4)
    u = make_distractor("tv", len(train), train.size, seed=1)
    x = train.frames_float() + 1.0 * u                    # σ = 1
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bjepa._io import atomic_write
from bjepa._util import progress_bar
from bjepa._validation import check_choice, check_nonnegative, check_positive_int

__all__ = [
    "DISTRACTORS",
    "GAMES",
    "AtariFrames",
    "Downsampler",
    "GameSpec",
    "Step",
    "action_names",
    "default_cache_dir",
    "distracted",
    "game_spec",
    "generate",
    "load_frames",
    "make_distractor",
    "one_hot",
    "patch_slices",
    "pong_visible",
    "register_game",
    "rollout",
]

logger = logging.getLogger(__name__)

DISTRACTORS = ("none", "tv", "ar1", "game")
_CACHE_VERSION = 1
SCREEN_SHAPE = (210, 160)


@dataclass(frozen=True)
class GameSpec:
    """What to record for one ALE game.

    :param rom: the ALE ROM id (``ale_py.roms.get_all_rom_ids()``).
    :param labels: label name → RAM address (0..127) of the ground-truth value.
    :param crop: ``(top, bottom, left, right)`` screen pixels kept (Python slice bounds);
        ``None`` keeps the full 210 × 160 screen.
    :param visible: ``visible(screen, ram) -> bool array (n_labels,)``: whether each labelled
        object is on screen in this (uncropped, grayscale) frame; ``None``: always.
    """

    rom: str
    labels: Mapping[str, int] = field(default_factory=dict)
    crop: tuple[int, int, int, int] | None = None
    visible: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        for name, addr in self.labels.items():
            if not isinstance(addr, int) or not 0 <= addr < 128:
                raise ValueError(f"labels[{name!r}] must be a RAM address in 0..127, got {addr!r}")
        if self.crop is not None:
            top, bottom, left, right = self.crop
            if not (0 <= top < bottom <= SCREEN_SHAPE[0] and 0 <= left < right <= SCREEN_SHAPE[1]):
                raise ValueError(f"crop must be (top, bottom, left, right) inside the "
                                 f"{SCREEN_SHAPE[0]}×{SCREEN_SHAPE[1]} screen, got {self.crop}")

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.labels)


# -- Pong ----------------------------------------------------------------------------------
#: Pong's court (rows), the column bands of the paddles and their grayscale values
PONG_COURT = (34, 194)
PONG_PLAYER = {"cols": (140, 144), "value": 147}
PONG_ENEMY = {"cols": (16, 20), "value": 148}
PONG_BALL_VALUE = 236


def pong_visible(screen: np.ndarray, ram: np.ndarray) -> np.ndarray:
    """Which of ``(player_y, enemy_y, ball_x, ball_y)`` are on screen in a Pong frame.

    A paddle counts when any of its pixels shows in its column band inside the court; the ball
    when any ball-coloured pixel shows in the court (between points it is gone, and its RAM
    bytes hold stale values).
    """
    court = screen[PONG_COURT[0]:PONG_COURT[1]]
    player = (court[:, slice(*PONG_PLAYER["cols"])] == PONG_PLAYER["value"]).any()
    enemy = (court[:, slice(*PONG_ENEMY["cols"])] == PONG_ENEMY["value"]).any()
    ball = bool((court == PONG_BALL_VALUE).any())
    return np.array([player, enemy, ball, ball])


GAMES: dict[str, GameSpec] = {}


def register_game(name: str, *, labels: Mapping[str, int] | None = None,
                  crop: tuple[int, int, int, int] | None = None,
                  visible: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                  rom: str | None = None) -> GameSpec:
    """Declare labels (RAM addresses), crop and visibility for a game; returns its spec.

    Example::

        register_game("breakout", labels={"paddle_x": 72, "ball_x": 99, "ball_y": 101})
    """
    spec = GameSpec(rom=rom or name, labels=dict(labels or {}), crop=crop, visible=visible)
    GAMES[name] = spec
    return spec


register_game("pong", labels={"player_y": 51, "enemy_y": 50, "ball_x": 49, "ball_y": 54},
              crop=(PONG_COURT[0], PONG_COURT[1], 0, 160), visible=pong_visible)


def game_spec(game: str | GameSpec) -> GameSpec:
    """The registered spec of ``game``, or an unlabelled full-screen spec for any ALE ROM."""
    if isinstance(game, GameSpec):
        return game
    if not isinstance(game, str) or not game:
        raise ValueError(f"game must be an ALE game name such as 'pong', got {game!r}")
    if game in GAMES:
        return GAMES[game]
    roms = _roms()
    check_choice("game", game, roms.get_all_rom_ids())
    return GameSpec(rom=game)


# -- emulator ------------------------------------------------------------------------------
def _roms() -> Any:
    try:
        from ale_py import roms
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Atari data needs ale-py: pip install 'bjepa[atari]'") from err
    return roms


def _make_ale(rom: str, seed: int) -> Any:
    import ale_py

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.setInt("random_seed", int(seed) % (2**31 - 1))
    ale.setFloat("repeat_action_probability", 0.0)  # stickiness is the policy's, recorded
    ale.setInt("frame_skip", 1)
    ale.loadROM(_roms().get_rom_path(rom))
    return ale


def action_names(game: str | GameSpec) -> tuple[str, ...]:
    """Names of the game's minimal action set, in the order of the recorded action indices
    (Pong: ``NOOP, FIRE, RIGHT, LEFT, RIGHTFIRE, LEFTFIRE``; RIGHT moves the player's paddle
    up)."""
    spec = game_spec(game)
    ale = _make_ale(spec.rom, 0)
    return tuple(str(a).split(".")[-1] for a in ale.getMinimalActionSet())


def one_hot(actions: np.ndarray, n_actions: int) -> np.ndarray:
    """``(..., n_actions)`` float32 one-hot vectors of integer ``actions`` in
    ``0..n_actions-1``."""
    check_positive_int("n_actions", n_actions)
    a = np.asarray(actions)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"actions must be integer indices, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= n_actions):
        raise ValueError(f"actions must lie in 0..{n_actions - 1} (n_actions={n_actions}), got "
                         f"values in {int(a.min())}..{int(a.max())}")
    return np.eye(n_actions, dtype=np.float32)[a]


@dataclass(frozen=True)
class Step:
    """One agent step of :func:`rollout`: the grayscale screen after it (max of the last two
    emulator frames), the RAM, the action index, the episode and the step within it."""

    screen: np.ndarray
    ram: np.ndarray
    action: int
    episode: int
    t: int


def rollout(game: str | GameSpec, *, episodes: int, max_episode_steps: int = 500,
            frame_skip: int = 4, sticky: float = 0.25, noop_max: int = 30,
            seed: int = 0) -> Iterator[Step]:
    """Play ``episodes`` episodes with the sticky random policy and yield every agent step.

    :param max_episode_steps: agent steps per episode at most (an episode also ends at game
        over).
    :param frame_skip: emulator frames per agent step.
    :param sticky: probability of repeating the previous action.
    :param noop_max: each episode starts with a uniform number of no-op steps in
        ``0..noop_max`` (not recorded) so episodes do not share their first frames.
    :param seed: seeds the emulator and the policy.
    """
    spec = game_spec(game)
    check_positive_int("episodes", episodes)
    check_positive_int("max_episode_steps", max_episode_steps)
    check_positive_int("frame_skip", frame_skip)
    if not 0.0 <= sticky < 1.0:
        raise ValueError(f"sticky must lie in [0, 1), got {sticky}")
    if isinstance(noop_max, bool) or not isinstance(noop_max, int) or noop_max < 0:
        raise ValueError(f"noop_max must be an int >= 0, got {noop_max!r}")
    ale = _make_ale(spec.rom, seed)
    actions = ale.getMinimalActionSet()
    rng = np.random.default_rng(seed)
    h, w = ale.getScreenDims()
    prev, last = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    for episode in range(episodes):
        ale.reset_game()
        for _ in range(int(rng.integers(noop_max + 1))):
            ale.act(actions[0])
        a = int(rng.integers(len(actions)))
        for t in range(max_episode_steps):
            if rng.random() >= sticky:
                a = int(rng.integers(len(actions)))
            for i in range(frame_skip):
                ale.act(actions[a])
                if i >= frame_skip - 2:
                    prev, last = last, prev
                    ale.getScreenGrayscale(last)
            screen = np.maximum(prev, last) if frame_skip > 1 else last.copy()
            yield Step(screen, ale.getRAM().copy(), a, episode, t)
            if ale.game_over():
                break


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix averaging input pixels over each output pixel's footprint."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
            m[i, j] = min(hi, j + 1) - max(lo, j)
    return (m / m.sum(1, keepdims=True)).astype(np.float32)


class Downsampler:
    """Crop then area-average a screen to ``size × size`` (exact for non-integer ratios)."""

    def __init__(self, crop: tuple[int, int, int, int] | None, size: int) -> None:
        self.crop = crop or (0, SCREEN_SHAPE[0], 0, SCREEN_SHAPE[1])
        top, bottom, left, right = self.crop
        self.rows = _area_matrix(bottom - top, size)
        self.cols = _area_matrix(right - left, size).T.copy()

    def __call__(self, screens: np.ndarray) -> np.ndarray:
        """``(..., 210, 160)`` uint8 screens → ``(..., size, size)`` uint8 frames."""
        top, bottom, left, right = self.crop
        img = np.asarray(screens)[..., top:bottom, left:right].astype(np.float32)
        lead = img.shape[:-2]
        img = img.reshape(-1, *img.shape[-2:])
        small = np.tensordot(img, self.cols, axes=([2], [0]))          # (T, h, size): one GEMM
        small = np.tensordot(small, self.rows, axes=([1], [1]))        # (T, size, size)
        small = np.swapaxes(small, 1, 2)
        return np.clip(np.rint(small), 0, 255).astype(np.uint8).reshape(*lead, *small.shape[1:])


# -- datasets ------------------------------------------------------------------------------
@dataclass
class AtariFrames:
    """Frames of one or more episodes with their RAM and labels.

    :ivar frames: ``(T, size, size)`` uint8 grayscale frames.
    :ivar ram: ``(T, 128)`` uint8 console RAM after each step.
    :ivar labels: ``(T, L)`` float32 ground truth read from the RAM.
    :ivar visible: ``(T, L)`` bool — the labelled object is on screen.
    :ivar episode: ``(T,)`` episode index of each frame.
    :ivar actions: ``(T,)`` action index (in the minimal action set, :attr:`action_names`)
        taken at each step: ``actions[t]`` was repeated over the emulator frames ending in
        frame ``t``.
    """

    game: str
    frames: np.ndarray
    ram: np.ndarray
    labels: np.ndarray
    visible: np.ndarray
    episode: np.ndarray
    actions: np.ndarray
    label_names: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> int:
        return int(self.frames.shape[1])

    @property
    def episodes(self) -> np.ndarray:
        """The distinct episode indices, in order of appearance."""
        return np.array(list(dict.fromkeys(self.episode.tolist())), dtype=np.int64)

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the minimal action set the ``actions`` index (recorded in ``meta``; asked
        of the emulator for files written before they were)."""
        names = self.meta.get("action_names")
        return tuple(names) if names else action_names(self.game)

    @property
    def n_actions(self) -> int:
        """Size of the minimal action set (the width of a one-hot action)."""
        return len(self.action_names)

    def frames_float(self) -> np.ndarray:
        """Frames scaled to [0, 1] as float32."""
        return self.frames.astype(np.float32) / 255.0

    def select(self, mask: np.ndarray) -> AtariFrames:
        """The frames where ``mask`` is true (a boolean array over frames)."""
        return replace(self, frames=self.frames[mask], ram=self.ram[mask],
                       labels=self.labels[mask], visible=self.visible[mask],
                       episode=self.episode[mask], actions=self.actions[mask])

    def split(self, test_episodes: int) -> tuple[AtariFrames, AtariFrames]:
        """``(train, test)``: the last ``test_episodes`` episodes are the test set."""
        eps = self.episodes
        check_positive_int("test_episodes", test_episodes)
        if test_episodes >= len(eps):
            raise ValueError(f"test_episodes must be smaller than the number of episodes "
                             f"({len(eps)}), got {test_episodes}")
        test = np.isin(self.episode, eps[-test_episodes:])
        return self.select(~test), self.select(test)

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.savez_compressed(
            tmp, frames=self.frames, ram=self.ram, labels=self.labels, visible=self.visible,
            episode=self.episode, actions=self.actions,
            label_names=np.array(self.label_names, dtype=str), game=np.array(self.game),
            meta=np.array(json.dumps(self.meta, sort_keys=True))), suffix=".npz")
        return path

    @classmethod
    def load(cls, path: str | Path) -> AtariFrames:
        """Read a file written by :meth:`save` (no pickles)."""
        with np.load(path, allow_pickle=False) as z:
            return cls(game=str(z["game"]), frames=z["frames"], ram=z["ram"],
                       labels=z["labels"], visible=z["visible"], episode=z["episode"],
                       actions=z["actions"], label_names=tuple(str(s) for s in z["label_names"]),
                       meta=json.loads(str(z["meta"])))


def generate(game: str | GameSpec = "pong", *, size: int = 48, episodes: int = 16,
             max_episode_steps: int = 500, frame_skip: int = 4, sticky: float = 0.25,
             noop_max: int = 30, seed: int = 0, progress: bool = True) -> AtariFrames:
    """Play and record ``episodes`` episodes (see :func:`rollout`), downsampled to ``size``."""
    spec = game_spec(game)
    check_positive_int("size", size)
    down = Downsampler(spec.crop, size)
    n_labels = len(spec.labels)
    addr = np.array(list(spec.labels.values()), dtype=np.int64)
    frames, rams, labels, visible, eps, acts = [], [], [], [], [], []
    screens: list[np.ndarray] = []  # downsampled in batches: one GEMM per batch, not per frame
    bar = progress_bar(episodes * max_episode_steps, progress, f"ALE {spec.rom}", unit="step",
                       leave=False)
    try:
        for step in rollout(spec, episodes=episodes, max_episode_steps=max_episode_steps,
                            frame_skip=frame_skip, sticky=sticky, noop_max=noop_max, seed=seed):
            screens.append(step.screen)
            if len(screens) == 256:
                frames.append(down(np.stack(screens)))
                screens.clear()
            rams.append(step.ram)
            labels.append(step.ram[addr].astype(np.float32))
            visible.append(np.ones(n_labels, bool) if spec.visible is None
                           else np.asarray(spec.visible(step.screen, step.ram), bool))
            eps.append(step.episode)
            acts.append(step.action)
            if bar is not None:
                bar.update(1)
        if screens:
            frames.append(down(np.stack(screens)))
    finally:
        if bar is not None:
            bar.close()
    meta = dict(game=spec.rom, size=size, episodes=episodes, max_episode_steps=max_episode_steps,
                frame_skip=frame_skip, sticky=sticky, noop_max=noop_max, seed=seed,
                crop=list(spec.crop) if spec.crop else None, labels=dict(spec.labels),
                action_names=list(action_names(spec)), version=_CACHE_VERSION)
    n = len(rams)
    logger.info("recorded %d frames of %s in %d episodes", n, spec.rom, episodes)
    return AtariFrames(game=spec.rom, frames=np.concatenate(frames), ram=np.stack(rams),
                       labels=np.stack(labels).reshape(n, n_labels),
                       visible=np.stack(visible).reshape(n, n_labels),
                       episode=np.array(eps, np.int64), actions=np.array(acts, np.int64),
                       label_names=spec.label_names, meta=meta)


def default_cache_dir() -> Path:
    """``$BJEPA_CACHE/atari`` if the variable is set, else ``~/.cache/bjepa/atari``."""
    root = os.environ.get("BJEPA_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "bjepa") / "atari"


def load_frames(game: str | GameSpec = "pong", *, cache_dir: str | Path | None = None,
                progress: bool = True, **kwargs: Any) -> AtariFrames:
    """:func:`generate` once, then read the cached ``.npz`` on every later call.

    The cache file name carries the game and a hash of every generation setting (including
    the labels and crop), so changing any of them makes a new file. ``kwargs`` go to
    :func:`generate`.
    """
    spec = game_spec(game)
    settings = dict(size=48, episodes=16, max_episode_steps=500, frame_skip=4, sticky=0.25,
                    noop_max=30, seed=0)
    unknown = set(kwargs) - set(settings)
    if unknown:
        raise TypeError(f"unknown argument(s) to load_frames: {sorted(unknown)}")
    settings.update(kwargs)
    key = json.dumps({**settings, "rom": spec.rom, "labels": dict(spec.labels),
                      "crop": spec.crop, "visible": getattr(spec.visible, "__qualname__", None),
                      "version": _CACHE_VERSION}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / (f"{spec.rom}-{settings['size']}px-{settings['episodes']}ep-"
                     f"seed{settings['seed']}-{digest}.npz")
    if path.is_file():
        try:
            data = AtariFrames.load(path)
        except (OSError, ValueError, KeyError) as err:
            logger.warning("cached %s is unreadable (%s); regenerating", path, err)
        else:
            logger.info("loaded %s", path)
            return data
    data = generate(spec, progress=progress, **settings)
    data.save(path)
    logger.info("cached %s", path)
    return data


# -- distractors ---------------------------------------------------------------------------
def patch_slices(size: int, patch: float = 0.5) -> tuple[slice, slice]:
    """Rows and columns of the centred square TV patch of side ``round(patch · size)``."""
    if not 0.0 < patch <= 1.0:
        raise ValueError(f"patch must lie in (0, 1], got {patch}")
    side = max(1, round(patch * size))
    lo = (size - side) // 2
    return slice(lo, lo + side), slice(lo, lo + side)


def _block_noise(rng: np.random.Generator, n: int, side: int, cell: int,
                 rho: float | None) -> np.ndarray:
    cells = -(-side // cell)
    eps = rng.standard_normal((n, cells, cells)).astype(np.float32)
    if rho is not None:
        scale = np.float32(np.sqrt(1.0 - rho**2))
        for t in range(1, n):  # stationary start: eps[0] already has unit variance
            eps[t] = rho * eps[t - 1] + scale * eps[t]
    return np.repeat(np.repeat(eps, cell, axis=1), cell, axis=2)[:, :side, :side]


def make_distractor(kind: str, n_frames: int, size: int, *, seed: int = 0, patch: float = 0.5,
                    cell: int = 4, rho: float = 0.9, other: AtariFrames | None = None
                    ) -> np.ndarray:
    """A unit-strength distractor ``u`` of shape ``(n_frames, size, size)`` (float32).

    Multiply by σ and add to frames in [0, 1]. ``"none"`` is zeros; ``"tv"`` and ``"ar1"``
    fill the centred patch (see :func:`patch_slices`) with unit-variance block noise, i.i.d.
    in time or AR(1) with coefficient ``rho``; ``"game"`` standardises ``other``'s frames
    (cycled if shorter) with their mean and std.
    """
    check_choice("distractor", kind, DISTRACTORS)
    check_positive_int("n_frames", n_frames)
    check_positive_int("size", size)
    check_positive_int("cell", cell)
    out = np.zeros((n_frames, size, size), np.float32)
    if kind == "none":
        return out
    if kind == "game":
        if other is None:
            raise ValueError("distractor 'game' needs other= frames of another game")
        if other.size != size:
            raise ValueError(f"other frames are {other.size} px, need {size} px")
        src = other.frames_float()
        src = (src - src.mean()) / max(float(src.std()), 1e-6)
        return src[np.arange(n_frames) % len(src)].astype(np.float32)
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must lie in (-1, 1), got {rho}")
    rng = np.random.default_rng(seed)
    rows, cols = patch_slices(size, patch)
    side = rows.stop - rows.start
    out[:, rows, cols] = _block_noise(rng, n_frames, side, cell, rho if kind == "ar1" else None)
    return out


def distracted(frames: AtariFrames, kind: str, sigma: float, *, seed: int = 0,
               other: AtariFrames | None = None, **kwargs: Any) -> np.ndarray:
    """``frames / 255 + σ · u`` with ``u`` from :func:`make_distractor` (float32)."""
    check_nonnegative("sigma", sigma)
    x = frames.frames_float()
    if sigma == 0 or kind == "none":
        return x
    return x + np.float32(sigma) * make_distractor(kind, len(frames), frames.size, seed=seed,
                                                   other=other, **kwargs)


