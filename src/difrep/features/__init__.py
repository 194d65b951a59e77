"""Feature extraction from diffusion backbones at noise steps t and blocks b."""

from .extractor import FeatureBackbone, FeatureExtractor
from .noise import image_seed, per_image_noise

__all__ = ["FeatureBackbone", "FeatureExtractor", "image_seed", "per_image_noise"]
