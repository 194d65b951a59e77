"""Semantic-segmentation data in the ADE20K SceneParsing layout: image/mask pairs and their labels.

Masks follow mmseg's ``reduce_zero_label`` convention: value 0 ("other") is ignored and becomes
``IGNORE_INDEX``, values 1..K become classes 0..K-1. A sample is picked by index for evaluation
and by ``(index, aug_seed)`` for training, so the random augmentation is a pure function of the
seed: a resumed or re-sharded run sees the same crops.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from .images import load_rgb
from .readers import DatasetLayoutError
from .seg_transforms import IGNORE_INDEX, labels_to_tensor, pixels_to_tensor

ADE20K_LAYOUT = ("ADEChallengeData2016/{images,annotations}/{training,validation}/: *.jpg (or .png) images "
                 "and *.png masks of the same name")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_FOLDERS = {"train": "training", "test": "validation", "val": "validation"}

TrainTransform = Callable[[Image.Image, np.ndarray, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
EvalTransform = Callable[[Image.Image, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def _by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in files:
                raise DatasetLayoutError(f"{files[path.stem]} and {path}: two files for one sample")
            files[path.stem] = path
    return files


def _and_more(count: int) -> str:
    return f" (and {count - 1} more like it)" if count > 1 else ""


def read_ade20k(root: str | Path, split: str = "train") -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a split, sorted by file stem; ``root`` is ADEChallengeData2016 or its parent."""
    root = Path(root)
    if split not in SPLIT_FOLDERS:
        raise DatasetLayoutError(f"split={split!r}: use train, val or test")
    sub = SPLIT_FOLDERS[split]
    # the parent may hold an images/ folder of its own (a COCO copy of the scenes, say)
    candidates = [c for c in (root, root / "ADEChallengeData2016") if (c / "images").is_dir()]
    if not candidates:
        raise DatasetLayoutError(f"{root}: no images/ folder in it or in {root / 'ADEChallengeData2016'}. "
                                 f"Expected layout: {ADE20K_LAYOUT}")
    base = next((c for c in candidates if (c / "images" / sub).is_dir()), candidates[-1])
    image_dir, mask_dir = base / "images" / sub, base / "annotations" / sub
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetLayoutError(f"missing folder {folder}. Expected layout: {ADE20K_LAYOUT}")
    images, masks = _by_stem(image_dir, IMAGE_SUFFIXES), _by_stem(mask_dir, (".png",))
    lone_images, lone_masks = sorted(images.keys() - masks.keys()), sorted(masks.keys() - images.keys())
    if lone_images:
        stem = lone_images[0]
        raise DatasetLayoutError(f"image {images[stem]} has no mask {mask_dir / stem}.png"
                                 f"{_and_more(len(lone_images))}")
    if lone_masks:
        stem = lone_masks[0]
        raise DatasetLayoutError(f"mask {masks[stem]} has no image {image_dir / stem}.jpg (or .png)"
                                 f"{_and_more(len(lone_masks))}")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def load_mask(path: str | Path) -> np.ndarray:
    """The raw values of a single-channel mask (mode L, or P read as palette indices, not colours)."""
    path = Path(path)
    try:
        with Image.open(path) as mask:
            mask.load()
            mode, values = mask.mode, np.array(mask)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"unreadable mask {path}: {str(err) or type(err).__name__}") from err
    if mode not in ("L", "P"):
        raise UserError(f"unreadable mask {path}: mode {mode}, expected a single-channel PNG (mode L or P) "
                        "holding class numbers")
    return values


def reduce_zero_label(values: np.ndarray, num_classes: int, source: str | Path) -> np.ndarray:
    """Mask values to classes: 0 -> IGNORE_INDEX, 1..K -> 0..K-1; a value above K is ``source``'s error."""
    top = int(values.max(initial=0))
    if top > num_classes:
        raise UserError(f"mask {source}: value {top} is above the {num_classes} classes of this data set "
                        "(masks hold 0 for 'other' and 1..K for the classes)")
    return np.where(values == 0, IGNORE_INDEX, values.astype(np.int64) - 1).astype(np.uint8)


def load_labels(path: str | Path, num_classes: int) -> np.ndarray:
    """A mask file as classes 0..K-1 with IGNORE_INDEX for unlabelled pixels."""
    return reduce_zero_label(load_mask(path), num_classes, path)


class SegmentationDataset(Dataset):
    """Samples ``(image, mask, index)``: ``ds[i]`` applies the eval transform, ``ds[i, seed]`` the
    train transform driven by ``torch.Generator().manual_seed(seed)`` alone.

    Without an eval transform, ``ds[i]`` gives the image in [-1, 1] and the mask at their own size.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        num_classes: int,
        classes: Sequence[str],
        train_transform: TrainTransform | None = None,
        eval_transform: EvalTransform | None = None,
    ) -> None:
        if len(classes) != num_classes:
            raise UserError(f"{len(classes)} class names for num_classes={num_classes}")
        if num_classes > IGNORE_INDEX:
            raise UserError(f"num_classes={num_classes}: at most {IGNORE_INDEX}, since {IGNORE_INDEX} marks "
                            "ignored pixels")
        self.samples = [(Path(image), Path(mask)) for image, mask in samples]
        self.num_classes = num_classes
        self.classes = list(classes)
        self.train_transform = train_transform
        self.eval_transform = eval_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        seed = None
        if isinstance(key, tuple):
            index, seed = operator.index(key[0]), operator.index(key[1])
            if self.train_transform is None:
                raise UserError("this SegmentationDataset has no train_transform: index it with an int, "
                                "or pass train_transform to sample (index, aug_seed)")
        else:
            index = operator.index(key)
        image_path, mask_path = self.samples[index]
        image = load_rgb(image_path)
        labels = load_labels(mask_path, self.num_classes)
        if labels.shape != (image.height, image.width):
            raise UserError(f"mask {mask_path} is {labels.shape[1]}x{labels.shape[0]} but image {image_path} "
                            f"is {image.width}x{image.height}")
        if seed is not None:
            assert self.train_transform is not None
            out_image, out_mask = self.train_transform(image, labels, torch.Generator().manual_seed(seed))
        elif self.eval_transform is not None:
            out_image, out_mask = self.eval_transform(image, labels)
        else:
            out_image, out_mask = pixels_to_tensor(image), labels_to_tensor(labels)
        return out_image, out_mask, index
