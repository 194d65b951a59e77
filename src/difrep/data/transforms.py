"""The paper's transforms: resize, centre crop, horizontal flip for training, RGB in [-1, 1]."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def build_transform(image_size: int, train: bool = False, flip: bool = True) -> v2.Compose:
    """Resize the shorter side to ``image_size``, centre-crop a square, flip at random when training.

    The paper uses no random crop. Output: float32 [3, S, S] in [-1, 1], the diffusion model's range.
    """
    steps: list = [
        v2.ToImage(),
        v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(image_size),
    ]
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    return v2.Compose(steps)
