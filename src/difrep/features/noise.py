"""Noise for x_t: fresh for training, or a deterministic draw per image for evaluation.

A deterministic draw depends only on (seed, image index, draw k), never on the batch an image
lands in, so evaluation results do not depend on batch size, order or the number of processes.
The same draw is shared by every noise step t of an image (common random numbers), which makes
comparisons across t less noisy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import UserError

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def image_seed(seed: int, index: int, draw: int = 0) -> int:
    """A well-mixed 63-bit seed for one (seed, image index, draw) triple."""
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ index) ^ draw) >> 1


def per_image_noise(
    shape: Sequence[int],
    indices: Sequence[int],
    seed: int = 0,
    num_draws: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal noise of shape [N, num_draws, *shape], one seeded draw per (image index, k).

    Drawn on the CPU by default, so that evaluation gives the same numbers on every machine; training
    draws it on its own device (``device``), where it is cheap and still independent of batching."""
    device = torch.device("cpu") if device is None else torch.device(device)
    out = torch.empty(len(indices), num_draws, *shape, device=device)
    gen = torch.Generator(device=device)
    for i, index in enumerate(indices):
        for k in range(num_draws):
            gen.manual_seed(image_seed(seed, int(index), k))
            torch.randn(*shape, generator=gen, device=device, out=out[i, k])
    return out


def noise_for_batch(images: torch.Tensor, indices: Sequence[int] | None, seed: int, num_draws: int,
                    missing: str) -> torch.Tensor:
    """:func:`per_image_noise` for a batch [N, C, H, W], checked: one data-set index per image, else the
    ``missing`` message. Returned on the images' device and dtype, shaped [N, num_draws, C, H, W]."""
    if indices is None:
        raise UserError(missing)
    if len(indices) != len(images):
        raise UserError(f"got {len(indices)} indices for {len(images)} images")
    return per_image_noise(images.shape[1:], indices, seed, num_draws).to(images)
