"""Fashion-MNIST scenes: real garments composed on larger canvases, a dense benchmark small enough for a CPU.

The same scenes are written in two layouts, ADE20K SceneParsing (semantic masks) and COCO instances
(one RLE per visible garment), so that semantic and instance predictions are scored on identical pixels.

Composition is painter's order: each item overwrites the canvas where its (resized) intensity is above 0.
The label of a pixel follows the pixel the image shows: the item drawn last there owns it, and it is
that item's class when the shown intensity is at least ``THRESHOLD``, ignored (0) when it is fainter,
background (1) where no item was drawn. So a faint edge pixel of a later item over an earlier item's
solid pixel is ignored: the image no longer shows the earlier item there, and the faint pixel is too
weak to call. A pixel's class is therefore a function of the written image and the ownership alone.
Dark parts inside a garment follow the same rule: 0 is background, faint is ignored.

Mask values: 0 ignored, 1 background, 2..11 the Fashion-MNIST classes (label + 2), as the ``scenes``
entry of the data catalog reads them.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..utils.files import atomic_write
from .catalog import FASHION_MNIST_CLASSES
from .fashion_mnist import load_fashion_mnist

SCENES_VERSION = 1  # bump when the same settings would compose different scenes
THRESHOLD = 32  # a garment pixel at least this bright (of 255) is labelled as the garment
MIN_AREA = 20  # an item with fewer visible solid pixels gets no COCO instance
IGNORED, BACKGROUND, FIRST_CLASS = 0, 1, 2
GARMENT_SIZE = 28
MAX_PLACEMENT_TRIES = 100  # occlusion=False: an item with no free place after this many draws is left out
MANIFEST = "scenes_manifest.json"
ADE_SPLITS = {"train": "training", "test": "validation"}
COCO_SPLITS = {"train": "train", "test": "val"}


@dataclass(frozen=True)
class Item:
    """One garment of a scene: which Fashion-MNIST image, its size on the canvas and its top-left corner."""

    garment: int
    label: int
    scale: float
    size: int
    x: int
    y: int


def scene_generator(seed: int, split: str, index: int) -> torch.Generator:
    """Scene ``index``'s own random stream, so that it is the same scene whatever the number of scenes."""
    digest = hashlib.sha256(f"difrep-scenes/{seed}/{split}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _place(gen: torch.Generator, size: int, canvas: int, taken: list[Item], occlusion: bool
           ) -> tuple[int, int] | None:
    """A top-left corner keeping the item inside the canvas (and off the others' boxes without occlusion)."""
    for _ in range(1 if occlusion else MAX_PLACEMENT_TRIES):
        x, y = (int(v) for v in torch.randint(canvas - size + 1, (2,), generator=gen))
        if occlusion or all(x + size <= o.x or o.x + o.size <= x or y + size <= o.y or o.y + o.size <= y
                            for o in taken):
            return x, y
    return None


def draw_items(gen: torch.Generator, labels: torch.Tensor, canvas: int, min_items: int, max_items: int,
               scale_range: tuple[float, float], occlusion: bool) -> list[Item]:
    """A scene's items in drawing order: count, garments, scales and positions all from ``gen``."""
    count = int(torch.randint(min_items, max_items + 1, (1,), generator=gen))
    low, high = scale_range
    items: list[Item] = []
    for _ in range(count):
        garment = int(torch.randint(len(labels), (1,), generator=gen))
        scale = low + (high - low) * float(torch.rand((), generator=gen))
        size = round(GARMENT_SIZE * scale)
        corner = _place(gen, size, canvas, items, occlusion)
        if corner is not None:
            items.append(Item(garment, int(labels[garment]), scale, size, *corner))
    return items


def resize_garment(garment: torch.Tensor, size: int) -> torch.Tensor:
    """A 28x28 uint8 garment resized bilinearly to size x size, rounded back to uint8."""
    resized = F.interpolate(garment[None, None].float(), size=(size, size), mode="bilinear",
                            align_corners=False)
    return resized[0, 0].round().clamp(0, 255).to(torch.uint8)


def compose(items: Sequence[Item], garments: torch.Tensor, canvas: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grey image, its mask, and per pixel the index of the item it is labelled as (-1: none)."""
    image = np.zeros((canvas, canvas), np.uint8)
    shown = np.full((canvas, canvas), -1, np.int64)  # the item whose pixel the image shows
    for k, item in enumerate(items):
        pixels = resize_garment(garments[item.garment], item.size).numpy()
        drawn = pixels > 0
        window = (slice(item.y, item.y + item.size), slice(item.x, item.x + item.size))
        image[window][drawn] = pixels[drawn]
        shown[window][drawn] = k
    solid = image >= THRESHOLD  # only drawn pixels are above 0, so solid pixels are always shown ones
    owner = np.where(solid, shown, -1)
    classes = np.array([item.label + FIRST_CLASS for item in items] + [BACKGROUND], np.uint8)  # [-1]: none
    mask = np.where(shown < 0, BACKGROUND, np.where(solid, classes[owner], IGNORED)).astype(np.uint8)
    return image, mask, owner


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _write_json(path: Path, value: Any) -> None:
    _write_file(path, json.dumps(value).encode())


def _read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.exists():
        return {"format": "difrep-scenes", "splits": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); delete {out} or choose another folder") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise UserError(f"{path}: not a scenes manifest; delete {out} or choose another folder")
    return manifest


def _coco_instance(mask: np.ndarray, annotation_id: int, image_id: int, category_id: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": annotation_id, "image_id": image_id, "category_id": category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(mask.sum()), "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        "iscrowd": 0,
    }


def _check(split: str, num_scenes: int, canvas: int, min_items: int, max_items: int,
           scale_range: tuple[float, float]) -> None:
    if split not in ADE_SPLITS:
        raise UserError(f"split={split!r}: use 'train' or 'test'")
    if num_scenes < 1:
        raise UserError(f"num_scenes={num_scenes}: make at least one scene")
    if not 1 <= min_items <= max_items:
        raise UserError(f"min_items={min_items}, max_items={max_items}: need 1 <= min_items <= max_items")
    low, high = scale_range
    if not 0 < low <= high:
        raise UserError(f"scale_range={scale_range}: need 0 < low <= high")
    if round(GARMENT_SIZE * low) < 1:
        raise UserError(f"scale_range={scale_range}: scale {low} shrinks a garment to nothing")
    if round(GARMENT_SIZE * high) > canvas:
        raise UserError(f"canvas={canvas}: too small for garments of {round(GARMENT_SIZE * high)} px "
                        f"(scale {high}); use a canvas of at least that or a smaller scale_range")
    try:
        import pycocotools  # noqa: F401 - checked before any file is written
    except ImportError as err:
        raise UserError("writing the COCO layout needs pycocotools: pip install 'difrep[dense]'") from err


def make_scenes(
    fashion_root: str | Path,
    out: str | Path,
    split: str,
    num_scenes: int,
    canvas: int = 84,
    min_items: int = 2,
    max_items: int = 5,
    scale_range: tuple[float, float] = (0.8, 1.25),
    seed: int = 0,
    occlusion: bool = True,
) -> dict[str, Any]:
    """Compose ``num_scenes`` scenes of a split ('train': training garments, 'test': test ones) into ``out``.

    Writes ``ADEChallengeData2016/{images,annotations}/{training|validation}/scene_NNNNNN.png``,
    ``images/{train|val}/`` with a copy of the images, ``annotations/instances_{train|val}.json`` (COCO),
    ``placements_{split}.json`` (every item of every scene, to recompose it) and, last, the split's
    entry in ``scenes_manifest.json``: a split without an entry is unfinished. A folder whose manifest
    records other settings for the split is refused; the same settings write the same scenes again.
    """
    out = Path(out)
    scale_range = (float(scale_range[0]), float(scale_range[1]))
    _check(split, num_scenes, canvas, min_items, max_items, scale_range)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; the scenes need an output folder")
    settings = {
        "version": SCENES_VERSION, "fashion_root": str(Path(fashion_root).resolve()),
        "num_scenes": num_scenes, "canvas": canvas, "min_items": min_items, "max_items": max_items,
        "scale_range": list(scale_range), "seed": seed, "occlusion": occlusion,
    }
    manifest = _read_manifest(out)
    recorded = manifest["splits"].get(split)
    if recorded is not None and recorded != settings:
        keys = sorted(recorded.keys() | settings.keys())
        changed = "; ".join(f"{key}: {recorded.get(key)!r}, asked {settings.get(key)!r}"
                            for key in keys if recorded.get(key) != settings.get(key))
        raise UserError(f"{out} holds {split} scenes made with other settings ({changed}): "
                        "choose another output folder or delete this one")
    garments, labels = load_fashion_mnist(fashion_root, split)
    if len(garments) == 0:
        raise UserError(f"{fashion_root}: the Fashion-MNIST {split} split has no images")

    if recorded is not None:  # rewriting: until the entry is back, the split counts as unfinished
        del manifest["splits"][split]
        _write_json(out / MANIFEST, manifest)
    ade = out / "ADEChallengeData2016"
    image_dir, mask_dir = ade / "images" / ADE_SPLITS[split], ade / "annotations" / ADE_SPLITS[split]
    coco_dir = out / "images" / COCO_SPLITS[split]
    coco_json = out / "annotations" / f"instances_{COCO_SPLITS[split]}.json"
    folders = (image_dir, mask_dir, coco_dir)
    for folder in (*folders, coco_json.parent):
        folder.mkdir(parents=True, exist_ok=True)

    images, annotations, placements = [], [], []
    per_class = [0] * len(FASHION_MNIST_CLASSES)
    for index in range(num_scenes):
        items = draw_items(scene_generator(seed, split, index), labels, canvas, min_items, max_items,
                           scale_range, occlusion)
        image, mask, owner = compose(items, garments, canvas)
        name, image_id = f"scene_{index:06d}.png", index + 1
        rgb = _png(np.repeat(image[:, :, None], 3, axis=2))
        _write_file(image_dir / name, rgb)
        _write_file(coco_dir / name, rgb)
        _write_file(mask_dir / name, _png(mask))
        images.append({"id": image_id, "file_name": name, "width": canvas, "height": canvas})
        visible = np.bincount(owner[owner >= 0], minlength=len(items))
        records = []
        for k, item in enumerate(items):
            per_class[item.label] += 1
            annotation_id = None
            if visible[k] >= MIN_AREA:
                annotation_id = len(annotations) + 1
                annotations.append(_coco_instance(owner == k, annotation_id, image_id, item.label + 1))
            records.append({**asdict(item), "visible_area": int(visible[k]), "annotation_id": annotation_id})
        placements.append({"file_name": name, "image_id": image_id, "items": records})

    written = {image["file_name"] for image in images}
    for folder in folders:  # scenes beyond num_scenes, or temporary files, left by an interrupted run
        for path in folder.iterdir():
            if path.name.lstrip(".").startswith("scene_") and path.name not in written:
                path.unlink()
    categories = [{"id": c + 1, "name": name, "supercategory": "garment"}
                  for c, name in enumerate(FASHION_MNIST_CLASSES)]
    _write_json(coco_json, {
        "info": {"description": f"difrep Fashion-MNIST scenes, {split} split",
                 "version": str(SCENES_VERSION)},
        "images": images, "annotations": annotations, "categories": categories,
    })
    placements_json = out / f"placements_{split}.json"
    _write_json(placements_json, {"settings": settings, "scenes": placements})
    manifest = _read_manifest(out)  # read again: the other split may have been written meanwhile
    manifest["splits"][split] = settings
    _write_json(out / MANIFEST, manifest)
    return {
        "split": split, "scenes": num_scenes, "items": sum(per_class), "annotations": len(annotations),
        "items_per_class": dict(zip(FASHION_MNIST_CLASSES, per_class)),
        "ade20k": str(ade), "coco": str(coco_json), "coco_images": str(coco_dir),
        "placements": str(placements_json),
    }
