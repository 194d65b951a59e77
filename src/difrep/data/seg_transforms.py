"""Joint image/mask transforms of the MAE/mmseg ADE20K recipe: rescale, crop, flip, colour, pad.

The image is resized bilinearly and the mask by nearest neighbour, both with pixel centres at
half-integers, so a mask pixel keeps the class of the image pixel it covers. Every random choice of
:class:`SegTrainTransform` comes from the ``torch.Generator`` it is given: the same generator seed
gives the same sample in any process, whatever the global RNGs hold.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

IGNORE_INDEX = 255
CROP_TRIES = 10
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA_DEGREES = 36.0  # mmseg's hue_delta=18 is in OpenCV's 8-bit hue units of 2 degrees


def fit_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) that keeps the aspect ratio and fits inside ``scale`` (long side, short side)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)


def _labels(mask: np.ndarray | Image.Image, image: Image.Image) -> np.ndarray:
    labels = np.asarray(mask)
    if labels.shape != (image.height, image.width):
        raise UserError(f"mask of shape {labels.shape} for an image of {image.height}x{image.width} pixels: "
                        "the two must have the same size")
    return labels


def _resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour on any integer dtype, sampling the same pixel centres as PIL's resize."""
    def sources(size_in: int, size_out: int) -> np.ndarray:
        return np.minimum(((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64), size_in - 1)

    return labels[sources(labels.shape[0], height)[:, None], sources(labels.shape[1], width)[None, :]]


def _resize(
    image: Image.Image, labels: np.ndarray, height: int, width: int
) -> tuple[Image.Image, np.ndarray]:
    if (height, width) == labels.shape:
        return image, labels
    return image.resize((width, height), Image.Resampling.BILINEAR), _resize_nearest(labels, height, width)


def pixels_to_tensor(pixels: np.ndarray | Image.Image) -> torch.Tensor:
    """RGB values in [0, 255] (H x W x 3) to a float32 tensor [3, H, W] in [-1, 1]."""
    array = np.asarray(pixels, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1) / 127.5 - 1.0


def labels_to_tensor(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _chance(gen: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=gen)) < p


def _randint(gen: torch.Generator, high: int) -> int:
    """Uniform in 0 .. high - 1."""
    return int(torch.randint(high, (), generator=gen))


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation in [0, 1], value on the input's scale."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    safe = np.where(delta > 0, delta, 1.0)
    sector = [(g - b) / safe % 6.0, (b - r) / safe + 2.0]
    hue = np.select([value == r, value == g], sector, (r - g) / safe + 4.0)
    hue = np.where(delta > 0, hue * 60.0, 0.0)
    saturation = np.where(value > 0, delta / np.where(value > 0, value, 1.0), 0.0)
    return hue, saturation, value


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    def channel(n: float) -> np.ndarray:
        k = (n + hue / 60.0) % 6.0
        return value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)

    return np.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def photometric_distortion(pixels: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on float RGB in [0, 255]: brightness, contrast before or after
    saturation and hue, each applied with probability 1/2."""
    if _chance(gen, 0.5):
        pixels = np.clip(pixels + _uniform(gen, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA), 0.0, 255.0)
    contrast_first = _chance(gen, 0.5)

    def contrast(pixels: np.ndarray) -> np.ndarray:
        if _chance(gen, 0.5):
            pixels = np.clip(pixels * _uniform(gen, *CONTRAST_RANGE), 0.0, 255.0)
        return pixels

    if contrast_first:
        pixels = contrast(pixels)
    saturation_factor = _uniform(gen, *SATURATION_RANGE) if _chance(gen, 0.5) else None
    hue_shift = _uniform(gen, -HUE_DELTA_DEGREES, HUE_DELTA_DEGREES) if _chance(gen, 0.5) else None
    if saturation_factor is not None or hue_shift is not None:
        hue, saturation, value = _rgb_to_hsv(pixels)
        if saturation_factor is not None:
            saturation = np.clip(saturation * saturation_factor, 0.0, 1.0)
        if hue_shift is not None:
            hue = (hue + hue_shift) % 360.0
        pixels = np.clip(_hsv_to_rgb(hue, saturation, value), 0.0, 255.0)
    if not contrast_first:
        pixels = contrast(pixels)
    return pixels.astype(np.float32)


class SegTrainTransform:
    """Random rescale, class-balanced random crop, flip, photometric distortion, pad to a square.

    Output: image float32 [3, c, c] in [-1, 1], padded with 0 (mid-grey); mask int64 [c, c],
    padded with ``IGNORE_INDEX``.
    """

    def __init__(
        self,
        crop_size: int,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
    ) -> None:
        if crop_size < 1:
            raise UserError(f"crop_size={crop_size}: must be a positive number of pixels")
        if min(scale) < 1:
            raise UserError(f"scale={scale}: both sides must be positive")
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise UserError(f"ratio_range={ratio_range}: need 0 < low <= high")
        if cat_max_ratio <= 0:
            raise UserError(f"cat_max_ratio={cat_max_ratio}: must be above 0 (1 disables the check)")
        if not 0 <= flip_prob <= 1:
            raise UserError(f"flip_prob={flip_prob}: must be a probability in [0, 1]")
        self.crop_size, self.scale, self.ratio_range = crop_size, scale, ratio_range
        self.cat_max_ratio, self.flip_prob, self.photometric = cat_max_ratio, flip_prob, photometric

    def _crop_box(self, labels: np.ndarray, gen: torch.Generator) -> tuple[int, int, int, int]:
        """Top, left, height, width of a crop where no class covers ``cat_max_ratio`` of the labelled
        pixels, if one of ``CROP_TRIES`` random crops qualifies; else the last one."""
        height, width = labels.shape
        crop_h, crop_w = min(self.crop_size, height), min(self.crop_size, width)
        for _ in range(CROP_TRIES):
            top, left = _randint(gen, height - crop_h + 1), _randint(gen, width - crop_w + 1)
            if self.cat_max_ratio >= 1:
                break
            window = labels[top:top + crop_h, left:left + crop_w]
            counts = np.bincount(window[window != IGNORE_INDEX].ravel())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return top, left, crop_h, crop_w

    def __call__(
        self, image: Image.Image, mask: np.ndarray | Image.Image, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = _labels(mask, image)
        ratio = _uniform(gen, *self.ratio_range)
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, labels = _resize(image, labels, *fit_size(image.height, image.width, target))
        top, left, crop_h, crop_w = self._crop_box(labels, gen)
        pixels = np.asarray(image, dtype=np.float32)[top:top + crop_h, left:left + crop_w]
        labels = labels[top:top + crop_h, left:left + crop_w]
        if _chance(gen, self.flip_prob):
            pixels, labels = pixels[:, ::-1], labels[:, ::-1]
        if self.photometric:
            pixels = photometric_distortion(pixels, gen)
        out_image = torch.zeros(3, self.crop_size, self.crop_size)
        out_mask = torch.full((self.crop_size, self.crop_size), IGNORE_INDEX, dtype=torch.int64)
        out_image[:, :crop_h, :crop_w] = pixels_to_tensor(pixels)
        out_mask[:crop_h, :crop_w] = labels_to_tensor(labels)
        return out_image, out_mask


class SegEvalTransform:
    """Resize the image to fit ``scale`` (aspect kept); the mask stays at its original size, since
    predictions are resized back to it before they are scored."""

    def __init__(self, scale: tuple[int, int] = (2048, 512)) -> None:
        if min(scale) < 1:
            raise UserError(f"scale={scale}: both sides must be positive")
        self.scale = scale

    def __call__(
        self, image: Image.Image, mask: np.ndarray | Image.Image
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = _labels(mask, image)
        height, width = fit_size(image.height, image.width, self.scale)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        return pixels_to_tensor(image), labels_to_tensor(labels)
