"""Feature pictures: what block b encodes at noise step t, as the PCA colour images DIFT and DINOv2 show.

Each feature map [C, H, W] is projected on the first three principal components of its pixels' C-vectors
and shown as RGB, beside the noised input x_t the block saw. The PCA of a (t, b) is fitted on the pixels of
all the images given, so that one colour means one direction of feature space in every row of the picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from ..data.subsets import first_of_classes
from ..models import Backbone
from .extractor import FeatureExtractor
from .noise import noise_for_batch

LIMITS = (0.01, 0.99)  # quantiles of the fit pixels mapped to 0 and 1: a few extreme pixels do not wash out the rest


def pca_rgb(maps: torch.Tensor, fit: torch.Tensor | None = None) -> torch.Tensor:
    """Maps [N, C, H, W] to [N, 3, H, W] in [0, 1]: every pixel on the first three principal components.

    The components, the centring mean and the [0, 1] limits (LIMITS quantiles, clipped) come from the
    pixels of ``fit`` (default: ``maps``), so maps projected with one fit share their colours. Each
    component's sign is fixed (its largest-magnitude loading is positive) so that the colours are
    deterministic; with fewer than three channels the missing components are zero.
    """
    fit = maps if fit is None else fit
    channels = maps.shape[1]
    pixels = fit.transpose(0, 1).reshape(channels, -1).T.double()
    mean = pixels.mean(0)
    centred = pixels - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    components = vectors.flip(1)[:, : min(3, channels)]
    rows = components.abs().argmax(0)
    components = components * components[rows, torch.arange(components.shape[1])].sign()
    scores = centred @ components
    lo, hi = torch.quantile(scores, torch.tensor(LIMITS, dtype=scores.dtype, device=scores.device), dim=0)
    flat = (maps.transpose(0, 1).reshape(channels, -1).T.double() - mean) @ components
    rgb = ((flat - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    rgb = F.pad(rgb, (0, 3 - rgb.shape[1]))
    n, _, h, w = maps.shape
    return rgb.T.reshape(3, n, h, w).transpose(0, 1).to(maps.dtype)


def noised_inputs(model: Backbone, images: torch.Tensor, indices: Sequence[int], timesteps: Sequence[int],
                  seed: int = 0) -> dict[int, torch.Tensor]:
    """x_t per step t, [N, *model.input_shape]: exactly the input FeatureExtractor(noise="fixed", seed=seed)
    feeds the backbone (the same per-image noise, shared by every t). Without a noise step: x0 under t=0."""
    with torch.no_grad():
        x0 = model.encode(images)
    if not model.takes_timestep:
        return {0: x0}
    eps = noise_for_batch(x0, indices, seed, 1, "feature pictures need the images' data-set indices")[:, 0]
    return {t: model.diffusion.q_sample(x0, torch.full((len(x0),), t, device=x0.device), eps)
            for t in model.validate_timesteps(timesteps)}


def _shown(model: Backbone, images: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An input as a [0, 1] picture at the images' size. Pixel inputs (ADM, diffusers U-Nets) are clamped
    to [-1, 1] as DDPM figures do; without a noise step (timm) the clean image is shown, not its mean/std
    normalisation; latents (Stable Diffusion, whose decoder difrep drops) show their first three channels,
    each min-max normalised per image and upsampled (nearest)."""
    if not model.takes_timestep:
        return (images.clamp(-1, 1) + 1) / 2
    if x.shape[-1] == images.shape[-1]:
        return (x.clamp(-1, 1) + 1) / 2
    x = x[:, :3]
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    return F.interpolate((x - lo) / (hi - lo).clamp_min(1e-12), size=images.shape[-2:], mode="nearest")


def feature_pictures(model: Backbone, images: torch.Tensor, indices: Sequence[int], timesteps: Sequence[int],
                     blocks: Sequence[int | str], seed: int = 0
                     ) -> tuple[dict[int, torch.Tensor], dict[tuple[int, int], torch.Tensor], dict[int, tuple[int, int]]]:
    """The shown inputs {t: [N, 1 or 3, S, S]}, the feature pictures {(t, b): [N, 3, S, S]} (both in [0, 1],
    at the images' size S) and each block's feature-map size {b: (H, W)}.

    ``images`` are [N, C, S, S] in [-1, 1] at ``model.image_size``; ``indices`` their data-set positions,
    which seed their noise. A backbone without a noise step is keyed t=0. Pictures are upsampled with
    nearest-neighbour interpolation, so a block's own resolution stays visible.
    """
    timesteps = list(timesteps) if model.takes_timestep else [0]
    extractor = FeatureExtractor(model, timesteps, blocks, pool=None, noise="fixed", seed=seed)
    feats = extractor(images, indices=indices)
    inputs = {t: _shown(model, images, x).float().cpu()
              for t, x in noised_inputs(model, images, indices, extractor.timesteps, seed).items()}
    size = images.shape[-2:]
    pictures = {key: F.interpolate(pca_rgb(f), size=size, mode="nearest").cpu() for key, f in feats.items()}
    sizes = {b: tuple(feats[(extractor.timesteps[0], b)].shape[-2:]) for b in extractor.blocks}
    return inputs, pictures, sizes


def write_feature_pictures(model: Backbone, images: torch.Tensor, indices: Sequence[int], timesteps: Sequence[int],
                           blocks: Sequence[int | str], path: str | Path, seed: int = 0, title: str = "") -> Path:
    """One PNG: a row per (image, t), images in the order given and t ascending within each; the first
    column the input x_t, then one column per block b (titled with b and its feature-map size). Grey inputs
    are drawn in grey. Every image enters each (t, b)'s PCA fit, so colours compare between images at one
    (t, b), not between columns or timesteps."""
    inputs, pictures, sizes = feature_pictures(model, images, indices, timesteps, blocks, seed)
    steps, bs = sorted(inputs), list(sizes)
    rows = [(i, t) for i in range(len(images)) for t in steps]
    fig = Figure(figsize=(1.7 * (1 + len(bs)), 1.7 * len(rows) + (0.5 if title else 0.2)))
    axes = fig.subplots(len(rows), 1 + len(bs), squeeze=False)
    noisy = model.takes_timestep
    titles = ["input x_t" if noisy else "input"] + [f"b={b} ({h}x{w})" for b, (h, w) in sizes.items()]
    for r, (i, t) in enumerate(rows):
        cells = [inputs[t][i]] + [pictures[(t, b)][i] for b in bs]
        for ax, cell, name in zip(axes[r], cells, titles):
            grey = cell.shape[0] == 1
            ax.imshow(cell[0] if grey else cell.permute(1, 2, 0), cmap="gray" if grey else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        label = f"t={t}" if noisy else "no noise step"
        axes[r][0].set_ylabel(f"#{indices[i]} {label}" if len(images) > 1 else label, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def write_class_pictures(model: Backbone, data: Dataset, timesteps: Sequence[int], blocks: Sequence[int | str],
                         path: str | Path, title: str = "", classes: int = 3) -> Path:
    """:func:`write_feature_pictures` of the first image of each of the first ``classes`` classes of ``data``
    (a few images that differ in kind), on the model's device: what a sweep draws for its best settings."""
    indices = first_of_classes(data, classes)
    device = next(model.parameters()).device
    images = torch.stack([data[i][0] for i in indices]).to(device)
    return write_feature_pictures(model, images, indices, timesteps, blocks, path, title=title)
