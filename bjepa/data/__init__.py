"""Data sets: the linear Noisy TV world and (optionally) Atari frames."""

from bjepa.data import control, noisy_tv

__all__ = ["control", "noisy_tv"]
