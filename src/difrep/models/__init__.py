"""Backbones that expose paper-numbered blocks through ``forward_intermediates``."""

from .adm import ADMConfig, ADMEncoder, ADMEncoderConfig, ADMUNet
from .backbone import Backbone, BlockInfo
from .checkpoint import CheckpointError, load_checkpoint, read_state_dict
from .registry import PRESETS, ModelConfig, create_model, list_models, shipped_weights

__all__ = [
    "PRESETS",
    "ADMConfig",
    "ADMEncoder",
    "ADMEncoderConfig",
    "ADMUNet",
    "Backbone",
    "BlockInfo",
    "CheckpointError",
    "ModelConfig",
    "create_model",
    "list_models",
    "load_checkpoint",
    "read_state_dict",
    "shipped_weights",
]
