"""World models: VJEPA, BJEPA and the baselines (VAE, autoregressive, JEPA)."""

from bjepa.models.bjepa import BJEPA
from bjepa.models.encoders import ENCODERS, make_encoder, register_encoder
from bjepa.models.heads import HEADS, make_head, register_head
from bjepa.models.jepa import JEPA
from bjepa.models.mixture import MixtureDensityHead, register_mdn
from bjepa.models.vae import VAE, AutoRegressive
from bjepa.models.vjepa import VJEPA

__all__ = [
    "BJEPA",
    "ENCODERS",
    "HEADS",
    "JEPA",
    "VAE",
    "VJEPA",
    "AutoRegressive",
    "MixtureDensityHead",
    "make_encoder",
    "make_head",
    "register_encoder",
    "register_head",
    "register_mdn",
]
