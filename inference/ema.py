"""Re-export of :mod:`bjepa.models.ema` (the EMA target and τ schedules live with the models,
which must not depend on the trainer); kept so ``from bjepa.inference.ema import ...`` works."""

from bjepa.models.ema import EMATarget, TauSchedule, constant_tau, cosine_tau, make_tau_schedule

__all__ = ["EMATarget", "TauSchedule", "constant_tau", "cosine_tau", "make_tau_schedule"]
