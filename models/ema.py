"""Exponential-moving-average target networks and momentum schedules.

The target network is a frozen deep copy kept *outside* any :class:`~pyro.nn.PyroModule` tree
(Pyro would otherwise register its weights as trainable parameters) and updated after each
optimiser step with fused ``torch._foreach_*`` ops::

    θ' ← τ θ' + (1 − τ) θ

Momentum schedules are pure functions of the global step, so a resumed run reproduces them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bjepa._validation import check_unit_interval

__all__ = ["EMATarget", "TauSchedule", "constant_tau", "cosine_tau", "make_tau_schedule"]

TauSchedule = Callable[[int, int], float]


@dataclass(frozen=True)
class constant_tau:  # noqa: N801 - reads as a function at call sites
    """τ(step) = ``tau``."""

    tau: float

    def __call__(self, step: int, total_steps: int) -> float:
        return self.tau


@dataclass(frozen=True)
class cosine_tau:  # noqa: N801
    """Cosine ramp from ``start`` at step 0 to ``end`` at the last step (I-JEPA/BYOL style)."""

    start: float = 0.99
    end: float = 1.0

    def __call__(self, step: int, total_steps: int) -> float:
        frac = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
        return self.end - (self.end - self.start) * 0.5 * (1.0 + math.cos(math.pi * frac))


def make_tau_schedule(tau: float | str | TauSchedule) -> TauSchedule:
    """Accept a constant τ in [0, 1], ``"cosine"`` (0.99 → 1), ``"cosine:a:b"`` or a callable."""
    if callable(tau):
        return tau
    if isinstance(tau, str):
        parts = tau.split(":")
        if parts[0] != "cosine" or len(parts) not in (1, 3):
            raise ValueError(f"tau {tau!r} not understood; use a float, 'cosine' or 'cosine:a:b'")
        if len(parts) == 3:
            try:
                start, end = float(parts[1]), float(parts[2])
            except ValueError as err:
                raise ValueError(f"tau {tau!r} not understood; 'cosine:a:b' needs numbers a, b "
                                 "in [0, 1]") from err
            start = check_unit_interval("tau start", start)
            end = check_unit_interval("tau end", end)
            return cosine_tau(start, end)
        return cosine_tau()
    return constant_tau(check_unit_interval("tau", tau))


class EMATarget:
    """A frozen copy of ``source`` that follows it by exponential moving average.

    Not an ``nn.Module`` on purpose: models hold it as a plain attribute so that neither
    Pyro nor ``model.parameters()`` sees its weights.
    """

    def __init__(self, source: nn.Module) -> None:
        self.module = copy.deepcopy(source)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, source: nn.Module, tau: float) -> None:
        """``θ' ← τ θ' + (1 − τ) θ`` for every parameter (buffers are copied)."""
        target = list(self.module.parameters())
        online = [p.detach() for p in source.parameters()]
        if tau == 0.0:
            torch._foreach_copy_(target, online)
        else:
            torch._foreach_mul_(target, tau)
            torch._foreach_add_(target, online, alpha=1.0 - tau)
        for bt, bs in zip(self.module.buffers(), source.buffers(), strict=True):
            bt.copy_(bs)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x)
