"""Dense tasks on backbone features: semantic segmentation with UperNet (the paper's Table 6)."""

from .adapter import DenseFeatures
from .config import SegmentationConfig, load_segmentation_config
from .inference import slide_inference, whole_inference
from .metrics import IGNORE_INDEX, SegmentationMetrics
from .task import SegmentationTask, evaluate_segmentation_checkpoint, train_segmentation
from .upernet import UperNet

__all__ = [
    "IGNORE_INDEX",
    "DenseFeatures",
    "SegmentationConfig",
    "SegmentationMetrics",
    "SegmentationTask",
    "UperNet",
    "evaluate_segmentation_checkpoint",
    "load_segmentation_config",
    "slide_inference",
    "train_segmentation",
    "whole_inference",
]
