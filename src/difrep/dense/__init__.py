"""Dense tasks on backbone features: semantic segmentation with UperNet (Table 6), detection and instance
segmentation with Mask R-CNN (Figure 8)."""

from .adapter import DenseFeatures
from .coco_eval import coco_evaluate, to_coco_results
from .config import SegmentationConfig, load_segmentation_config
from .detection_config import DetectionConfig, load_detection_config
from .detection_task import DetectionTask, evaluate_detection_checkpoint, train_detection
from .inference import slide_inference, whole_inference
from .maskrcnn import MaskRCNNConfig, build_mask_rcnn
from .metrics import IGNORE_INDEX, SegmentationMetrics
from .pyramid import DetectionBackbone, SimpleFeaturePyramid
from .task import SegmentationTask, evaluate_segmentation_checkpoint, train_segmentation
from .upernet import UperNet

__all__ = [
    "IGNORE_INDEX",
    "DenseFeatures",
    "DetectionBackbone",
    "DetectionConfig",
    "DetectionTask",
    "MaskRCNNConfig",
    "SimpleFeaturePyramid",
    "build_mask_rcnn",
    "coco_evaluate",
    "evaluate_detection_checkpoint",
    "load_detection_config",
    "to_coco_results",
    "train_detection",
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
