"""Training and inference: SVI trainer (single model, replica-batched, DDP, restarts),
compiled ELBO, EMA targets, schedules, checkpoints."""

from bjepa.inference.checkpoint import CheckpointError, load_model, save_checkpoint
from bjepa.inference.distributed import fit_ddp, init_distributed, is_rank_zero
from bjepa.inference.fit import ELBOS, FusedSVI, NonFiniteLossError, TrainingHistory, fit
from bjepa.inference.jit import CompiledELBO
from bjepa.inference.replicas import fit_replicas
from bjepa.inference.restarts import RestartResult, fit_restarts, restart_seed
from bjepa.inference.weights import nuts_posterior, posterior_summary, svi_weight_posterior
from bjepa.models.ema import EMATarget, constant_tau, cosine_tau, make_tau_schedule

__all__ = [
    "ELBOS",
    "CheckpointError",
    "CompiledELBO",
    "EMATarget",
    "FusedSVI",
    "NonFiniteLossError",
    "RestartResult",
    "TrainingHistory",
    "constant_tau",
    "cosine_tau",
    "fit",
    "fit_ddp",
    "fit_replicas",
    "fit_restarts",
    "init_distributed",
    "is_rank_zero",
    "load_model",
    "make_tau_schedule",
    "nuts_posterior",
    "posterior_summary",
    "restart_seed",
    "save_checkpoint",
    "svi_weight_posterior",
]
