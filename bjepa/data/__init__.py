"""Data sets: the linear Noisy TV world and (optionally) Atari frames."""

from bjepa.data import noisy_tv

__all__ = ["noisy_tv"]
