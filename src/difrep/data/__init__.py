"""Data sets in their official layouts, the paper's transforms and robust loading."""

from .catalog import CATALOG, create_dataset, list_datasets, load_split
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
from .subsets import balanced_subset, held_out_split
from .transforms import build_transform

__all__ = [
    "CATALOG",
    "DEBIAN_FASHION_MNIST",
    "DatasetLayoutError",
    "ImageDataset",
    "ImageList",
    "ShardSampler",
    "TensorImageDataset",
    "UnreadableImageError",
    "balanced_subset",
    "held_out_split",
    "build_loader",
    "build_transform",
    "collate_skipping",
    "create_dataset",
    "find_unreadable",
    "list_datasets",
    "load_fashion_mnist",
    "load_rgb",
    "load_split",
    "read_idx",
]
