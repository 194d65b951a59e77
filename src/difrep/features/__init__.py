"""Feature extraction from diffusion backbones at noise steps t and blocks b."""

from .extractor import FeatureExtractor
from .noise import image_seed, per_image_noise

__all__ = ["FeatureExtractor", "image_seed", "per_image_noise"]
