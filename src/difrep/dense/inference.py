"""Whole-image and sliding-window inference: class scores for an image of any size.

Sliding windows follow mmsegmentation's rule: windows of ``crop`` pixels every ``stride`` pixels, the last
window of a row or column moved back to end at the image's border; every pixel's scores are the mean over
the windows that cover it. An image smaller than a window is padded (with 0, mid-grey in [-1, 1]) to the
window size and the padding's scores are dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Scorer = Callable[[torch.Tensor, int], torch.Tensor]  # (windows [B, 3, crop, crop], window index) -> [B, K, crop, crop]


def _starts(size: int, crop: int, stride: int) -> list[int]:
    count = max(size - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, size - crop), 0) for i in range(count)})


def slide_inference(score: Scorer, image: torch.Tensor, num_classes: int, crop: int, stride: int) -> torch.Tensor:
    """Scores [K, H, W] of one image [3, H, W], averaged over the windows covering each pixel."""
    _, h, w = image.shape
    padded = F.pad(image, (0, max(crop - w, 0), 0, max(crop - h, 0)))
    ph, pw = padded.shape[-2:]
    total = image.new_zeros(num_classes, ph, pw)
    count = image.new_zeros(1, ph, pw)
    k = 0
    for y in _starts(ph, crop, stride):
        for x in _starts(pw, crop, stride):
            window = padded[:, y : y + crop, x : x + crop]
            total[:, y : y + crop, x : x + crop] += score(window[None], k)[0].float()
            count[:, y : y + crop, x : x + crop] += 1
            k += 1
    return (total / count)[:, :h, :w]


def whole_inference(score: Scorer, image: torch.Tensor, crop: int) -> torch.Tensor:
    """Scores [K, H, W] of one image, the whole image as one window (resized to ``crop`` and back)."""
    _, h, w = image.shape
    x = F.interpolate(image[None], size=(crop, crop), mode="bilinear", align_corners=False)
    return F.interpolate(score(x, 0).float(), size=(h, w), mode="bilinear", align_corners=False)[0]
