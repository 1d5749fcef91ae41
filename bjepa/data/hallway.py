"""A 2-D hallway that forks: a world whose future is bimodal (docs/method.md#multimodal-hallway).

The hallway is a straight corridor (the *trunk*) along the x-axis that ends at a junction
``J = (0, 0)``; from there two branches leave at ``± branch_angle`` from straight ahead, the
*left* one towards ``+y`` and the *right* one towards ``−y``. Every point within
``half_width`` of one of the three centre-line segments is free space; everything else is wall.
In particular the wedge straight ahead of the junction, between the two branches, is wall.

The generative story of one episode::

    b       ~ Uniform{+1 (left), −1 (right)}                 # the turn taken at the fork
    s_0     ~ U(−L_trunk, −L_trunk + speed)                    # arc length along the centre line
    s_{t+1} = s_t + speed · (1 + speed_noise · η_t),           η_t ~ N(0, 1), clipped to ±2
    u_t     ~ N(0, lateral²), clipped to ±0.8 · half_width     # sideways offset
    p_t     = c(s_t, b) + u_t · n(s_t, b)                      # 2-D position
    x_t     = M p_t + obs_noise · ε_t,                         ε_t ~ N(0, I_{D_x})

until ``s_t`` passes the end of the branch. ``c(s, b)`` is the centre-line point at arc length
``s`` (the trunk for ``s < 0``, branch ``b`` for ``s >= 0``) and ``n(s, b)`` its unit normal.
Drawing ``b`` at the start is the same as flipping the coin at the junction: nothing the agent
does before the fork depends on ``b``, so from any position on the trunk the future beyond the
junction is an even mixture of the two branches. ``M`` is a fixed ``D_x × 2`` matrix with
orthonormal columns (the identity when ``obs_dim == 2``), shared by the train and test episodes.

Training pairs are ``(x_t, x_{t+horizon})`` inside an episode. The ground truth (positions,
arc lengths, the episode's branch) travels with each pair for evaluation only.

Example::

    train, test = make_split(seed=0)
    train.context.shape, train.context_pos.shape   # (N, 8), (N, 2)
    test.fork_mask().float().mean()                # share of pairs whose future forks
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from bjepa._validation import (
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_tensor,
)

__all__ = [
    "REGION_LEFT",
    "REGION_RIGHT",
    "REGION_TRUNK",
    "REGION_WALL",
    "HallwayGeometry",
    "HallwayPairs",
    "make_split",
    "simulate",
]

#: codes returned by :meth:`HallwayGeometry.region`
REGION_WALL, REGION_TRUNK, REGION_LEFT, REGION_RIGHT = -1, 0, 1, 2


@dataclass(frozen=True)
class HallwayGeometry:
    """The hallway's shape.

    :param trunk_length: length of the corridor before the junction.
    :param branch_length: length of each branch after the junction.
    :param branch_angle: angle of each branch from straight ahead, in degrees (0 < angle < 90).
    :param half_width: half the corridor's width.
    """

    trunk_length: float = 3.0
    branch_length: float = 3.0
    branch_angle: float = 45.0
    half_width: float = 0.15

    def __post_init__(self) -> None:
        check_positive("trunk_length", self.trunk_length)
        check_positive("branch_length", self.branch_length)
        check_positive("half_width", self.half_width)
        if not 0.0 < self.branch_angle < 90.0:
            raise ValueError(f"branch_angle must lie in (0, 90) degrees, got {self.branch_angle}")

    def direction(self, branch: int) -> tuple[float, float]:
        """Unit vector along branch ``+1`` (left) or ``−1`` (right)."""
        a = math.radians(self.branch_angle)
        return math.cos(a), branch * math.sin(a)

    def centreline(self, arc: torch.Tensor, branch: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre-line points ``c(s, b)`` and unit normals ``n(s, b)``, each ``(..., 2)``."""
        a = math.radians(self.branch_angle)
        b = branch.to(arc.dtype)
        on_branch = arc >= 0
        dx = torch.where(on_branch, torch.full_like(arc, math.cos(a)), torch.ones_like(arc))
        dy = torch.where(on_branch, b * math.sin(a), torch.zeros_like(arc))
        point = torch.stack([arc * dx, arc * dy], dim=-1)
        normal = torch.stack([-dy, dx], dim=-1)
        return point, normal

    def distances(self, pos: torch.Tensor) -> torch.Tensor:
        """Distance from each point ``(..., 2)`` to the trunk, left and right centre lines:
        ``(..., 3)``."""
        check_tensor("pos", pos, finite=False)
        if pos.dim() == 0 or pos.shape[-1] != 2:
            raise ValueError(f"pos must hold 2-D points (last dimension 2), got shape "
                             f"{tuple(pos.shape)}")
        segments = [((-self.trunk_length, 0.0), (0.0, 0.0))]
        for b in (1, -1):
            dx, dy = self.direction(b)
            segments.append(((0.0, 0.0), (self.branch_length * dx, self.branch_length * dy)))
        out = []
        for (ax, ay), (bx, by) in segments:
            a = pos.new_tensor([ax, ay])
            ab = pos.new_tensor([bx - ax, by - ay])
            t = ((pos - a) @ ab / (ab @ ab)).clamp(0.0, 1.0)
            out.append((pos - a - t.unsqueeze(-1) * ab).norm(dim=-1))
        return torch.stack(out, dim=-1)

    def in_corridor(self, pos: torch.Tensor) -> torch.Tensor:
        """``True`` where a point lies in free space (within ``half_width`` of a centre line)."""
        return self.distances(pos).amin(-1) <= self.half_width

    def region(self, pos: torch.Tensor) -> torch.Tensor:
        """Region code of each point: :data:`REGION_TRUNK`, :data:`REGION_LEFT`,
        :data:`REGION_RIGHT` (the nearest centre line, if within ``half_width``) or
        :data:`REGION_WALL`. The junction itself counts as trunk."""
        d = self.distances(pos)
        codes = torch.tensor([REGION_TRUNK, REGION_LEFT, REGION_RIGHT], device=pos.device)
        nearest = codes[d.argmin(-1)]
        return torch.where(d.amin(-1) <= self.half_width, nearest,
                           torch.full_like(nearest, REGION_WALL))

    def mask_grid(self, resolution: int = 300, margin: float = 0.4, *,
                  xlim: tuple[float, float] | None = None,
                  ylim: tuple[float, float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(xs, ys, free)``: a grid and its free-space mask (rows: y), for plotting the walls
        exactly as :meth:`in_corridor` defines them. The grid spans the hallway plus
        ``margin``, or ``xlim`` / ``ylim`` where given."""
        check_positive_int("resolution", resolution)
        dx, dy = self.direction(1)
        xlim = xlim or (-self.trunk_length - margin, self.branch_length * dx + margin)
        ylim = ylim or (-self.branch_length * dy - margin, self.branch_length * dy + margin)
        xs = np.linspace(*xlim, resolution)
        ys = np.linspace(*ylim, resolution)
        gx, gy = np.meshgrid(xs, ys)
        pts = torch.as_tensor(np.stack([gx, gy], -1))
        return xs, ys, self.in_corridor(pts).numpy()


@dataclass
class HallwayPairs:
    """Context/target pairs ``(x_t, x_{t+horizon})`` with their ground truth.

    ``branch`` (``+1`` left, ``−1`` right) is the turn taken in the pair's episode; it is for
    evaluation only. ``embedding`` is the true ``M`` (``x = M p + noise``).
    """

    context: torch.Tensor
    target: torch.Tensor
    context_pos: torch.Tensor
    target_pos: torch.Tensor
    context_arc: torch.Tensor
    target_arc: torch.Tensor
    branch: torch.Tensor
    episode: torch.Tensor
    geometry: HallwayGeometry
    embedding: torch.Tensor
    speed: float
    horizon: int
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.context.shape[0]

    @property
    def look_ahead(self) -> float:
        """Mean distance walked between context and target, ``speed · horizon``."""
        return self.speed * self.horizon

    def fork_mask(self, within: float | None = None) -> torch.Tensor:
        """Pairs whose context lies on the trunk at most ``within`` before the junction
        (default: half the look-ahead), so that the target lies well past the fork."""
        within = 0.5 * self.look_ahead if within is None else check_positive("within", within)
        return (self.context_arc <= 0) & (self.context_arc >= -within)

    def to(self, device: torch.device | str) -> HallwayPairs:
        """A copy with the tensors moved to ``device``."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return HallwayPairs(**moved)


def _embedding(rng: np.random.Generator, obs_dim: int) -> np.ndarray:
    if obs_dim == 2:
        return np.eye(2)
    q, _ = np.linalg.qr(rng.standard_normal((obs_dim, 2)))
    return q


def simulate(
    n_episodes: int,
    *,
    seed: int = 0,
    geometry: HallwayGeometry | None = None,
    obs_dim: int = 8,
    speed: float = 0.25,
    speed_noise: float = 0.1,
    lateral: float = 0.04,
    obs_noise: float = 0.02,
    horizon: int = 3,
    embedding: np.ndarray | None = None,
) -> HallwayPairs:
    """Simulate ``n_episodes`` walks through the hallway and return their
    ``(x_t, x_{t+horizon})`` pairs (see the module docstring for the generative story).

    :param seed: seeds everything random here (branches, starts, steps, noise, ``M``).
    :param obs_dim: ``D_x >= 2``; ``2`` observes the position itself (plus noise).
    :param embedding: a ``(obs_dim, 2)`` matrix ``M`` to use instead of drawing one.
    """
    n_episodes = check_positive_int("n_episodes", n_episodes)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    geometry = geometry or HallwayGeometry()
    obs_dim = check_positive_int("obs_dim", obs_dim)
    if obs_dim < 2:
        raise ValueError(f"obs_dim must be >= 2 (the position is 2-D), got {obs_dim}")
    speed = check_positive("speed", speed)
    speed_noise = check_nonnegative("speed_noise", speed_noise)
    lateral = check_nonnegative("lateral", lateral)
    obs_noise = check_nonnegative("obs_noise", obs_noise)
    horizon = check_positive_int("horizon", horizon)
    rng = np.random.default_rng(seed)
    if embedding is None:
        embedding = _embedding(rng, obs_dim)
    embedding = np.asarray(embedding, dtype=float)
    if embedding.shape != (obs_dim, 2):
        raise ValueError(f"embedding must have shape ({obs_dim}, 2), got {embedding.shape}")

    n_steps = int(math.ceil((geometry.trunk_length + geometry.branch_length) / speed * 1.5)) + 2
    branch = rng.choice([1, -1], size=n_episodes)
    start = -geometry.trunk_length + speed * rng.random(n_episodes)
    eta = np.clip(rng.standard_normal((n_episodes, n_steps - 1)), -2.0, 2.0)
    steps = speed * (1.0 + speed_noise * eta)
    arc = np.concatenate([start[:, None], start[:, None] + np.cumsum(steps, axis=1)], axis=1)
    lim = 0.8 * geometry.half_width
    offset = np.clip(lateral * rng.standard_normal(arc.shape), -lim, lim)

    arc_t = torch.as_tensor(arc)
    branch_t = torch.as_tensor(branch).unsqueeze(1).expand_as(arc_t)
    point, normal = geometry.centreline(arc_t, branch_t)
    pos = point + torch.as_tensor(offset).unsqueeze(-1) * normal
    noise = obs_noise * rng.standard_normal(arc.shape + (obs_dim,))
    obs = pos @ torch.as_tensor(embedding).T + torch.as_tensor(noise)

    inside = arc <= geometry.branch_length  # an episode ends at the end of its branch
    ctx, tgt = [], []
    for e in range(n_episodes):
        length = int(inside[e].sum())
        t = np.arange(max(length - horizon, 0))
        ctx.append(np.stack([np.full_like(t, e), t], 1))
        tgt.append(np.stack([np.full_like(t, e), t + horizon], 1))
    ci, ti = (torch.as_tensor(np.concatenate(a)) for a in (ctx, tgt))

    def take(a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return a[idx[:, 0], idx[:, 1]]

    f32 = torch.float32
    return HallwayPairs(
        context=take(obs, ci).to(f32), target=take(obs, ti).to(f32),
        context_pos=take(pos, ci).to(f32), target_pos=take(pos, ti).to(f32),
        context_arc=take(arc_t, ci).to(f32), target_arc=take(arc_t, ti).to(f32),
        branch=torch.as_tensor(branch)[ci[:, 0]].long(), episode=ci[:, 0].long().clone(),
        geometry=geometry, embedding=torch.as_tensor(embedding, dtype=f32),
        speed=speed, horizon=horizon,
        meta=dict(n_episodes=n_episodes, seed=seed, obs_dim=obs_dim, speed_noise=speed_noise,
                  lateral=lateral, obs_noise=obs_noise),
    )


def make_split(seed: int = 0, *, train_episodes: int = 200, test_episodes: int = 100,
               **kwargs) -> tuple[HallwayPairs, HallwayPairs]:
    """Train and test pairs from separate episodes of the same hallway (same ``M``).

    ``kwargs`` go to :func:`simulate` (``geometry``, ``obs_dim``, ``speed``, ``horizon``...).
    """
    train = simulate(train_episodes, seed=seed, **kwargs)
    kwargs = {**kwargs, "embedding": train.embedding.double().numpy()}
    # a different stream for the test episodes, still a pure function of ``seed``
    test = simulate(test_episodes, seed=seed + 1_000_003, **kwargs)
    return train, test
