"""difrep: text-free diffusion models as visual representation learners."""

from .diffusion import GaussianDiffusion
from .features import FeatureExtractor
from .models import Backbone, CheckpointError, create_model, list_models

__version__ = "0.1.0"

__all__ = ["Backbone", "CheckpointError", "FeatureExtractor", "GaussianDiffusion", "create_model", "list_models"]
