"""Image files to tensors: robust decoding, and a data set over a list of (path, label) samples.

A file that cannot be decoded (unreadable, truncated, empty, not an image) raises
:class:`UnreadableImageError` naming it. With ``on_error="skip"`` the sample is dropped from its
batch instead and a warning naming the file goes to the ``difrep.data`` logger, which runs write
to their log: nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from ..errors import UserError

log = logging.getLogger("difrep.data")

OnError = Literal["raise", "skip"]


class UnreadableImageError(UserError):
    """An image file that cannot be decoded."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"unreadable image {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency is composited on white, 16/32-bit grey rescaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully (so truncation is caught here, not later) and convert it to RGB."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImageError(path, "the file is empty")
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except UnreadableImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(path, str(err) or type(err).__name__) from err


@dataclass
class ImageList:
    """What a data-set reader finds: samples (path, label) and the class names, indexed by label."""

    samples: list[tuple[Path, int]]
    classes: list[str]

    def labels(self) -> list[int]:
        return [label for _, label in self.samples]


class ImageDataset(Dataset):
    """Samples ``(image, label, index)``; the index seeds per-image evaluation noise."""

    def __init__(
        self,
        images: ImageList,
        transform: Callable[[Image.Image], Any] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise UserError(f"on_error={on_error!r}: use 'raise' or 'skip'")
        self.samples = images.samples
        self.classes = images.classes
        self.transform = transform
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> tuple[Any, int, int] | None:
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except UnreadableImageError as err:
            if self.on_error == "raise":
                raise
            log.warning("skipped %s", err)
            return None
        return (self.transform(image) if self.transform else image), label, index


class TensorImageDataset(Dataset):
    """In-memory uint8 images [N, H, W] or [N, H, W, C] (e.g. Fashion-MNIST), same sample format."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes = images, labels, list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        image = to_rgb(Image.fromarray(self.images[index].numpy()))
        return (self.transform(image) if self.transform else image), int(self.labels[index]), index


class _VerifyFiles(Dataset):
    def __init__(self, paths: Sequence[Path], load: Callable[[Path], Any]) -> None:
        self.paths, self.load = paths, load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str:
        try:
            self.load(self.paths[index])
        except UserError as err:
            return str(err)
        return ""


def find_unreadable(
    paths: Sequence[Path], workers: int = 0, load: Callable[[Path], Any] = load_rgb
) -> list[str]:
    """Decode every file with ``load`` (in ``workers`` processes; a picklable function then) and return
    the message of each UserError it raises."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_VerifyFiles(paths, load), batch_size=64, num_workers=workers, collate_fn=list)
    return [msg for batch in loader for msg in batch if msg]


def collate_skipping(batch: list[Any]) -> Any:
    """Collate the samples that loaded; samples dropped with ``on_error='skip'`` arrive as None."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        return None
    return default_collate(kept)
