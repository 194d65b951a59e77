"""Data sets in their official layouts, the paper's transforms and robust loading."""

from .catalog import (
    ADE20K_CLASSES,
    CATALOG,
    create_dataset,
    create_detection_dataset,
    create_segmentation_dataset,
    list_datasets,
    load_split,
)
from .coco import CocoDetection, LargeScaleJitter, find_coco
from .fashion_mnist import DEBIAN_FASHION_MNIST, load_fashion_mnist, read_idx
from .images import (
    ImageDataset,
    ImageList,
    TensorImageDataset,
    UnreadableImageError,
    collate_skipping,
    find_unreadable,
    load_rgb,
)
from .loader import ShardSampler, build_loader
from .readers import DatasetLayoutError
from .seg_transforms import SegEvalTransform, SegTrainTransform
from .segmentation import (
    IGNORE_INDEX,
    SegmentationDataset,
    load_labels,
    load_mask,
    read_ade20k,
    reduce_zero_label,
)
from .subsets import balanced_subset, held_out_split
from .transforms import build_transform

__all__ = [
    "ADE20K_CLASSES",
    "CATALOG",
    "CocoDetection",
    "DEBIAN_FASHION_MNIST",
    "DatasetLayoutError",
    "IGNORE_INDEX",
    "ImageDataset",
    "ImageList",
    "LargeScaleJitter",
    "SegEvalTransform",
    "SegTrainTransform",
    "SegmentationDataset",
    "ShardSampler",
    "TensorImageDataset",
    "UnreadableImageError",
    "balanced_subset",
    "held_out_split",
    "build_loader",
    "build_transform",
    "collate_skipping",
    "create_dataset",
    "create_detection_dataset",
    "create_segmentation_dataset",
    "find_coco",
    "find_unreadable",
    "list_datasets",
    "load_fashion_mnist",
    "load_labels",
    "load_mask",
    "load_rgb",
    "load_split",
    "read_ade20k",
    "read_idx",
    "reduce_zero_label",
]
