"""Training and inference: the one training loop (single process, replica-batched, DDP,
restarts) with its callbacks, the step primitive and ELBOs, the hooks for a plain Pyro loop,
checkpoints, weight posteriors."""

from bjepa.inference.adaptive_beta import AdaptiveBeta, CalibratedBeta, TargetRate
from bjepa.inference.callbacks import (
    Callback,
    EarlyStopping,
    LambdaCallback,
    MetricsLogger,
    ProgressBar,
    TensorBoardLogger,
)
from bjepa.inference.checkpoint import CheckpointError, load_model, save_checkpoint
from bjepa.inference.distributed import DDPStrategy, fit_ddp, init_distributed, is_rank_zero
from bjepa.inference.engine import FitSettings, SingleProcess, Strategy, Trainer, TrainingHistory
from bjepa.inference.fit import fit
from bjepa.inference.jit import CompiledELBO
from bjepa.inference.replicas import ReplicaStack, fit_replicas
from bjepa.inference.restarts import RestartResult, fit_restarts, restart_seed
from bjepa.inference.svi import (
    ELBOS,
    FusedSVI,
    HookedSVI,
    NonFiniteLossError,
    elbo_parts,
    set_seed,
    with_hooks,
)
from bjepa.inference.weights import nuts_posterior, posterior_summary, svi_weight_posterior
from bjepa.models.ema import EMATarget, constant_tau, cosine_tau, make_tau_schedule

__all__ = [
    "ELBOS",
    "AdaptiveBeta",
    "CalibratedBeta",
    "Callback",
    "CheckpointError",
    "CompiledELBO",
    "DDPStrategy",
    "EMATarget",
    "EarlyStopping",
    "FitSettings",
    "FusedSVI",
    "HookedSVI",
    "LambdaCallback",
    "MetricsLogger",
    "NonFiniteLossError",
    "ProgressBar",
    "ReplicaStack",
    "RestartResult",
    "SingleProcess",
    "Strategy",
    "TargetRate",
    "TensorBoardLogger",
    "Trainer",
    "TrainingHistory",
    "constant_tau",
    "cosine_tau",
    "elbo_parts",
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
    "set_seed",
    "svi_weight_posterior",
    "with_hooks",
]
