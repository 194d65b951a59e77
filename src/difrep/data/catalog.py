"""``create_dataset``: every data set by name, checked against the paper's class and image counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset, Subset

from ..errors import UserError
from . import readers
from .fashion_mnist import load_fashion_mnist
from .images import ImageDataset, ImageList, OnError, TensorImageDataset
from .readers import DatasetLayoutError
from .subsets import balanced_subset

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass(frozen=True)
class DatasetSpec:
    title: str
    read: Callable[..., ImageList] | None
    num_classes: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    layout: str = ""


CATALOG: dict[str, DatasetSpec] = {
    "imagenet": DatasetSpec(
        "ImageNet-1k", readers.read_imagenet, 1000, {"train": 1_281_167, "test": 50_000},
        "ROOT/train/<wnid>/*.JPEG, ROOT/val/<wnid>/*.JPEG (val sorted into class folders)",
    ),
    "imagenet-1pct": DatasetSpec(
        "ImageNet-1k, 1% of the labels", partial(readers.read_imagenet, subset="1percent"), 1000,
        {"train": 12_811, "test": 50_000}, "as imagenet; train keeps the SimCLR 1percent.txt files",
    ),
    "imagenet-10pct": DatasetSpec(
        "ImageNet-1k, 10% of the labels", partial(readers.read_imagenet, subset="10percent"), 1000,
        {"train": 128_116, "test": 50_000}, "as imagenet; train keeps the SimCLR 10percent.txt files",
    ),
    "imagenet-50": DatasetSpec(
        "ImageNet-50", readers.read_imagenet_classes, 50, {"test": 2_500},
        "as imagenet, plus class_list=FILE of 50 wnids",
    ),
    "cub200": DatasetSpec(
        "CUB-200-2011", readers.read_cub, 200, {"train": 5_994, "test": 5_794},
        "CUB_200_2011/{images/,images.txt,image_class_labels.txt,train_test_split.txt,classes.txt}",
    ),
    "nabirds": DatasetSpec(
        "NABirds", readers.read_nabirds, 555, {"train": 23_929, "test": 24_633},
        "nabirds/{images/,images.txt,image_class_labels.txt,train_test_split.txt,classes.txt}",
    ),
    "aircraft": DatasetSpec(
        "FGVC-Aircraft (variants)", readers.read_aircraft, 100, {"train": 6_667, "test": 3_333},
        "fgvc-aircraft-2013b/data/{images/,variants.txt,images_variant_{trainval,test}.txt}",
    ),
    "cars": DatasetSpec(
        "Stanford Cars", readers.read_cars, 196, {"train": 8_144, "test": 8_041},
        "stanford_cars/{devkit/,cars_train/,cars_test/,cars_test_annos_withlabels.mat}",
    ),
    "dogs": DatasetSpec(
        "Stanford Dogs", readers.read_dogs, 120, {"train": 12_000, "test": 8_580},
        "ROOT/{Images/<synset-name>/*.jpg,train_list.mat,test_list.mat}",
    ),
    "flowers102": DatasetSpec(
        "Oxford Flowers-102", readers.read_flowers, 102, {"train": 2_040, "test": 6_149},
        "flowers-102/{jpg/,imagelabels.mat,setid.mat}",
    ),
    "fashion-mnist": DatasetSpec(
        "Fashion-MNIST", None, 10, {"train": 60_000, "test": 10_000},
        "the IDX files (gzipped or not), e.g. /usr/share/datasets/fashion-mnist",
    ),
    "folder": DatasetSpec(
        "folder of class sub-folders", readers.read_folder, None, {},
        "ROOT/<class>/*, or ROOT/{train,val|test}/<class>/*",
    ),
}


def list_datasets() -> list[str]:
    return list(CATALOG)


def check_counts(name: str, root: str | Path, split: str, classes: int, images: int) -> None:
    """Refuse a partial or wrong copy: its counts must be the paper's (Table 7)."""
    spec = CATALOG[name]
    split = "test" if split == "val" else split
    problems = []
    if spec.num_classes is not None and classes != spec.num_classes:
        problems.append(f"{classes} classes (expected {spec.num_classes})")
    if split in spec.counts and images != spec.counts[split]:
        problems.append(f"{images:,} {split} images (expected {spec.counts[split]:,})")
    if problems:
        raise DatasetLayoutError(
            f"{spec.title} at {root}: found {' and '.join(problems)}. A partial or wrong copy? "
            f"Expected layout: {spec.layout}. Pass check=False to use it anyway."
        )


def create_dataset(
    name: str,
    root: str | Path,
    split: str = "train",
    transform: Callable[[Image.Image], Any] | None = None,
    check: bool = True,
    on_error: OnError = "raise",
    **options: Any,
) -> Dataset:
    """A data set whose samples are ``(image, label, index)``; see ``CATALOG`` for names and layouts.

    ``check`` compares the class and image counts with the paper's; ``on_error='skip'`` drops
    unreadable images (each logged by path) instead of stopping.
    """
    if name not in CATALOG:
        raise UserError(f"unknown data set {name!r}: available are {', '.join(CATALOG)}")
    spec = CATALOG[name]
    if name == "fashion-mnist":
        images, labels = load_fashion_mnist(root, "test" if split == "val" else split)
        dataset: Dataset = TensorImageDataset(images, labels, FASHION_MNIST_CLASSES, transform)
        found_classes, found_images = len(labels.unique()), len(labels)
    else:
        assert spec.read is not None
        image_list = spec.read(root, split, **options)
        dataset = ImageDataset(image_list, transform, on_error)
        found_classes, found_images = len(image_list.classes), len(image_list.samples)
    if check:
        check_counts(name, root, split, found_classes, found_images)
    return dataset


def load_split(
    name: str,
    root: str | Path,
    split: str,
    transform: Callable[[Image.Image], Any] | None = None,
    per_class: int | None = None,
    seed: int = 0,
    check: bool = True,
    on_error: OnError = "raise",
    **options: Any,
) -> tuple[Dataset, list[str]]:
    """:func:`create_dataset`, optionally cut to a seeded class-balanced subset of ``per_class``
    images a class; returns the data set and the class names of the full split."""
    data = create_dataset(name, root, split, transform=transform, check=check, on_error=on_error, **options)
    classes = list(data.classes)
    if per_class:
        data = Subset(data, balanced_subset(data.targets, per_class=per_class, seed=seed))
    return data, classes
