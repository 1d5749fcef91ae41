"""Training and inference: SVI trainer, EMA targets, schedules."""

from bjepa.inference.ema import EMATarget, constant_tau, cosine_tau, make_tau_schedule
from bjepa.inference.fit import ELBOS, TrainingHistory, fit
from bjepa.inference.weights import nuts_posterior, posterior_summary, svi_weight_posterior

__all__ = [
    "ELBOS",
    "EMATarget",
    "TrainingHistory",
    "constant_tau",
    "cosine_tau",
    "fit",
    "make_tau_schedule",
    "nuts_posterior",
    "posterior_summary",
    "svi_weight_posterior",
]
