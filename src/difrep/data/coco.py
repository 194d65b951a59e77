"""COCO instances in the official layout: images with boxes, masks and labels for Mask R-CNN.

Images come as float tensors [3, H, W] in [0, 1] (torchvision's detection convention; the detector's
own transform normalises them to the backbone's range). Targets follow torchvision: ``boxes`` [N, 4]
xyxy in pixels (COCO's xywh, x2 = x + w), ``labels`` 1..K (0 is the background), ``masks`` [N, H, W]
uint8 decoded from polygons or RLE by pycocotools. Crowd regions are left out of training targets, as
COCO's own evaluation treats them (an ignore region, neither a hit nor a miss); images without a
usable annotation are dropped from training only. Category ids map to labels 1..K in id order and back
(:meth:`CocoDetection.category_id`), so COCO's 80 classes with ids up to 90 become labels 1..80.
"""

from __future__ import annotations

import contextlib
import io
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import UserError
from .images import load_rgb
from .readers import DatasetLayoutError

COCO_LAYOUT = ("ROOT/{train2017,val2017}/ and ROOT/annotations/instances_{train,val}2017.json (or ROOT/images/"
               "{train,val}/ and ROOT/annotations/instances_{train,val}.json, as difrep data make-scenes writes)")
COCO_SPLITS = {"train": "train", "test": "val", "val": "val"}
Target = dict[str, torch.Tensor]
DetectionTransform = Callable[[torch.Tensor, Target, torch.Generator], tuple[torch.Tensor, Target]]


def find_coco(root: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split in the official COCO 2017 layout or the scenes' layout."""
    root = Path(root)
    if split not in COCO_SPLITS:
        raise DatasetLayoutError(f"split={split!r}: use train, val or test")
    name = COCO_SPLITS[split]
    for annotation_file, images in ((root / "annotations" / f"instances_{name}2017.json", root / f"{name}2017"),
                                    (root / "annotations" / f"instances_{name}.json", root / "images" / name)):
        if annotation_file.is_file():
            if not images.is_dir():
                raise DatasetLayoutError(f"{annotation_file} has no image folder {images}. "
                                         f"Expected layout: {COCO_LAYOUT}")
            return annotation_file, images
    raise DatasetLayoutError(f"{root}: no annotations/instances_{name}2017.json (or instances_{name}.json). "
                             f"Expected layout: {COCO_LAYOUT}")


def load_coco(annotation_file: str | Path) -> Any:
    """pycocotools' index of an annotation file, without its progress prints; a broken file is named."""
    try:
        from pycocotools.coco import COCO
    except ImportError as err:
        raise UserError("COCO data needs pycocotools: pip install 'difrep[dense]'") from err
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(annotation_file))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"unreadable COCO annotation file {annotation_file}: {err}") from err


def _usable(annotation: dict[str, Any]) -> bool:
    width, height = annotation["bbox"][2:]
    return not annotation.get("iscrowd", 0) and width > 0 and height > 0


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """xyxy boxes [N, 4] enclosing each mask's pixels (x2, y2 one past the last pixel, as COCO's x + w)."""
    if len(masks) == 0:
        return torch.zeros(0, 4)
    masks = masks.bool()
    rows, cols = masks.any(2), masks.any(1)
    index_y, index_x = torch.arange(masks.shape[1]), torch.arange(masks.shape[2])
    big = max(masks.shape[1], masks.shape[2])
    y0 = torch.where(rows, index_y, big).min(1).values
    y1 = torch.where(rows, index_y, -1).max(1).values + 1
    x0 = torch.where(cols, index_x, big).min(1).values
    x1 = torch.where(cols, index_x, -1).max(1).values + 1
    return torch.stack([x0, y0, x1, y1], 1).float()


class CocoDetection(Dataset):
    """Samples ``(image, target, index)``; ``ds[i]`` as stored, ``ds[i, seed]`` through the train transform
    driven by ``torch.Generator().manual_seed(seed)`` alone (the same sample in any process)."""

    def __init__(self, annotation_file: str | Path, image_dir: str | Path,
                 train_transform: DetectionTransform | None = None, keep_empty: bool = True) -> None:
        self.annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        self.coco = load_coco(annotation_file)
        self.category_ids = sorted(self.coco.getCatIds())
        if not self.category_ids:
            raise DatasetLayoutError(f"{annotation_file}: no categories")
        self.classes = [self.coco.cats[c]["name"] for c in self.category_ids]
        self._label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        ids = sorted(self.coco.getImgIds())
        if not keep_empty:
            ids = [i for i in ids if any(_usable(a) for a in self.coco.imgToAnns[i])]
        self.image_ids = ids
        self.train_transform = train_transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def category_id(self, label: int) -> int:
        """The COCO category id of detector label ``label`` (1..K)."""
        return self.category_ids[label - 1]

    def target(self, index: int) -> Target:
        """Image ``index``'s non-crowd instances at the image's stored size."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        anns = [a for a in self.coco.imgToAnns[image_id] if _usable(a)]
        unknown = {a["category_id"] for a in anns} - self._label.keys()
        if unknown:
            raise UserError(f"{self.annotation_file}: image {image_id} has annotations of unknown categories {unknown}")
        h, w = int(info["height"]), int(info["width"])
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {"boxes": boxes[keep], "labels": torch.tensor([self._label[a["category_id"]] for a in anns],
                                                             dtype=torch.int64).reshape(-1)[keep],
                "masks": torch.from_numpy(masks)[keep], "image_id": torch.tensor(image_id)}

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Target, int]:
        seed = None
        if isinstance(key, tuple):
            index, seed = operator.index(key[0]), operator.index(key[1])
            if self.train_transform is None:
                raise UserError("this CocoDetection has no train_transform: index it with an int")
        else:
            index = operator.index(key)
        info = self.coco.imgs[self.image_ids[index]]
        path = self.image_dir / info["file_name"]
        image = load_rgb(path)
        if (image.height, image.width) != (info["height"], info["width"]):
            raise UserError(f"{path} is {image.width}x{image.height} but {self.annotation_file} says "
                            f"{info['width']}x{info['height']}")
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        target = self.target(index)
        if seed is not None:
            assert self.train_transform is not None
            pixels, target = self.train_transform(pixels, target, torch.Generator().manual_seed(seed))
        return pixels, target, index


class LargeScaleJitter:
    """ViTDet's training augmentation: resize the long side to ``size`` x U(low, high), take a random
    ``size`` x ``size`` crop (padding with mid-grey, the detector's zero after normalisation), flip; boxes
    are recomputed from the cropped masks and instances left with no pixel are dropped."""

    def __init__(self, size: int, scale_range: tuple[float, float] = (0.1, 2.0), flip: float = 0.5) -> None:
        if size < 1 or not 0 < scale_range[0] <= scale_range[1]:
            raise UserError(f"data.size={size}, data.scale_range={list(scale_range)}: need size >= 1 and "
                            "0 < low <= high")
        self.size, self.scale_range, self.flip = size, scale_range, flip

    def __call__(self, image: torch.Tensor, target: Target, gen: torch.Generator) -> tuple[torch.Tensor, Target]:
        low, high = self.scale_range
        factor = self.size * (low + (high - low) * float(torch.rand((), generator=gen))) / max(image.shape[-2:])
        h, w = (max(round(s * factor), 1) for s in image.shape[-2:])
        image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        masks = target["masks"]
        masks = F.interpolate(masks[None].float(), size=(h, w), mode="nearest")[0].to(torch.uint8) if len(masks) \
            else masks.new_zeros((0, h, w))
        y0 = int(torch.randint(max(h - self.size, 0) + 1, (1,), generator=gen))
        x0 = int(torch.randint(max(w - self.size, 0) + 1, (1,), generator=gen))
        image = image[:, y0:y0 + self.size, x0:x0 + self.size]
        masks = masks[:, y0:y0 + self.size, x0:x0 + self.size]
        if float(torch.rand((), generator=gen)) < self.flip:
            image, masks = image.flip(-1), masks.flip(-1)
        canvas = image.new_full((3, self.size, self.size), 0.5)
        canvas[:, :image.shape[1], :image.shape[2]] = image
        padded = masks.new_zeros((len(masks), self.size, self.size))
        padded[:, :masks.shape[1], :masks.shape[2]] = masks
        keep = padded.flatten(1).bool().any(1)
        padded = padded[keep]
        return canvas, {**target, "masks": padded, "boxes": boxes_from_masks(padded), "labels": target["labels"][keep]}

