"""Image grids: many images in [-1, 1] as one PNG."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import save_image


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    """Images in [-1, 1] as one PNG grid (square by default)."""
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    save_image((images.clamp(-1, 1) + 1) / 2, str(path), nrow=nrow, padding=2, pad_value=1.0)
