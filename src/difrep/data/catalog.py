"""``create_dataset`` and ``create_segmentation_dataset``: every data set by name, checked against the
paper's class and image counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset, Subset

from ..errors import UserError
from . import coco, readers, segmentation
from .fashion_mnist import load_fashion_mnist
from .images import ImageDataset, ImageList, OnError, TensorImageDataset
from .readers import DatasetLayoutError
from .segmentation import EvalTransform, SegmentationDataset, TrainTransform
from .subsets import balanced_subset

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

# The SceneParsing benchmark's 150 classes, in the order of mask values 1..150.
ADE20K_CLASSES: tuple[str, ...] = tuple(
    "wall,building,sky,floor,tree,ceiling,road,bed,windowpane,grass,cabinet,sidewalk,person,earth,door,"
    "table,mountain,plant,curtain,chair,car,water,painting,sofa,shelf,house,sea,mirror,rug,field,"
    "armchair,seat,fence,desk,rock,wardrobe,lamp,bathtub,railing,cushion,base,box,column,signboard,"
    "chest of drawers,counter,sand,sink,skyscraper,fireplace,refrigerator,grandstand,path,stairs,"
    "runway,case,pool table,pillow,screen door,stairway,river,bridge,bookcase,blind,coffee table,"
    "toilet,flower,book,hill,bench,countertop,stove,palm,kitchen island,computer,swivel chair,boat,bar,"
    "arcade machine,hovel,bus,towel,light,truck,tower,chandelier,awning,streetlight,booth,"
    "television receiver,airplane,dirt track,apparel,pole,land,bannister,escalator,ottoman,bottle,"
    "buffet,poster,stage,van,ship,fountain,conveyer belt,canopy,washer,plaything,swimming pool,stool,"
    "barrel,basket,waterfall,tent,bag,minibike,cradle,oven,ball,food,step,tank,trade name,microwave,"
    "pot,animal,bicycle,lake,dishwasher,screen,blanket,sculpture,hood,sconce,vase,traffic light,tray,"
    "ashcan,fan,pier,crt screen,plate,monitor,bulletin board,shower,radiogram,glass,clock,flag".split(",")
)
# Generated Fashion-MNIST scenes: mask value 1 is the background, 2..11 the Fashion-MNIST classes.
SCENES_CLASSES: tuple[str, ...] = ("background", *FASHION_MNIST_CLASSES)


@dataclass(frozen=True)
class DatasetSpec:
    title: str
    read: Callable[..., ImageList | list[tuple[Path, Path]]] | None
    num_classes: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    layout: str = ""
    kind: str = "classification"  # or "segmentation" ((image, mask) pairs), or "detection" (COCO instances)
    classes: tuple[str, ...] = ()  # segmentation: the names of classes 0..K-1, which masks do not carry


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
    # The paper's text gives 3,169 validation images; the official SceneParsing release has 2,000.
    "ade20k": DatasetSpec(
        "ADE20K (SceneParsing)", segmentation.read_ade20k, 150, {"train": 20_210, "test": 2_000},
        segmentation.ADE20K_LAYOUT, kind="segmentation", classes=ADE20K_CLASSES,
    ),
    "scenes": DatasetSpec(
        "Fashion-MNIST scenes (generated)", segmentation.read_ade20k, 11, {},
        "as ade20k, with *.png images (written by difrep.data.scenes)", kind="segmentation",
        classes=SCENES_CLASSES,
    ),
    "coco": DatasetSpec(
        "COCO 2017 instances", None, 80, {"train": 118_287, "test": 5_000}, coco.COCO_LAYOUT, kind="detection",
    ),
}


def list_datasets() -> list[str]:
    return list(CATALOG)


def _spec(name: str, kind: str) -> DatasetSpec:
    if name not in CATALOG:
        raise UserError(f"unknown data set {name!r}: available are {', '.join(CATALOG)}")
    spec = CATALOG[name]
    if spec.kind != kind:
        maker = {"segmentation": "create_segmentation_dataset", "detection": "create_detection_dataset"}.get(
            spec.kind, "create_dataset")
        raise UserError(f"{name!r} is a {spec.kind} data set: load it with difrep.data.{maker}")
    return spec


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
    spec = _spec(name, "classification")
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


def create_segmentation_dataset(
    name: str,
    root: str | Path,
    split: str = "train",
    train_transform: TrainTransform | None = None,
    eval_transform: EvalTransform | None = None,
    check: bool = True,
) -> SegmentationDataset:
    """A segmentation data set whose samples are ``(image, mask, index)``; see :class:`SegmentationDataset`.

    ``check`` compares the number of image/mask pairs with the official release's.
    """
    spec = _spec(name, "segmentation")
    assert spec.read is not None and spec.num_classes is not None
    samples = spec.read(root, split)
    if check:
        check_counts(name, root, split, spec.num_classes, len(samples))
    return SegmentationDataset(samples, spec.num_classes, spec.classes, train_transform, eval_transform)


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


def create_detection_dataset(
    name: str,
    root: str | Path,
    split: str = "train",
    train_transform: coco.DetectionTransform | None = None,
    keep_empty: bool = True,
    check: bool = True,
) -> coco.CocoDetection:
    """A COCO-layout data set whose samples are ``(image, target, index)``; see :class:`~.coco.CocoDetection`.

    ``check`` compares the image count of the annotation file (empty images included) and the number of
    categories with COCO 2017's; ``keep_empty=False`` then drops images without a usable annotation.
    """
    _spec(name, "detection")
    dataset = coco.CocoDetection(*coco.find_coco(root, split), train_transform, keep_empty)
    if check:
        check_counts(name, root, split, len(dataset.classes), len(dataset.coco.imgs))
    return dataset
