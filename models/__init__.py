"""World models: VJEPA, BJEPA and the baselines (VAE, autoregressive, JEPA)."""

from bjepa.models import conv  # noqa: F401 - registers the "conv"/"deconv" encoders
from bjepa.models.action import ActionBJEPA, ActionVJEPA
from bjepa.models.bjepa import BJEPA
from bjepa.models.encoders import ENCODERS, make_encoder, register_encoder
from bjepa.models.heads import HEADS, make_head, register_head
from bjepa.models.jepa import JEPA
from bjepa.models.mixture import MixtureDensityHead, register_mdn
from bjepa.models.registry import available_models, build_model, register_model
from bjepa.models.rssm import RSSM
from bjepa.models.state_space import KalmanOracle, LinearGaussianSSM
from bjepa.models.vae import VAE, AutoRegressive
from bjepa.models.vjepa import VJEPA

__all__ = [
    "ActionBJEPA",
    "ActionVJEPA",
    "BJEPA",
    "ENCODERS",
    "HEADS",
    "JEPA",
    "KalmanOracle",
    "LinearGaussianSSM",
    "RSSM",
    "VAE",
    "VJEPA",
    "AutoRegressive",
    "MixtureDensityHead",
    "available_models",
    "build_model",
    "make_encoder",
    "make_head",
    "register_encoder",
    "register_head",
    "register_mdn",
    "register_model",
]
