"""A detector backbone from one block: ViTDet's simple feature pyramid on backbone features at noise step t.

The detector hands over its padded, normalised batch [N, 3, H, W] (values in [-1, 1]; H, W multiples of
32). It is resized by ``input_size / detector_size`` (to multiples of the backbone's ``size_multiple``: a
U-Net's coarsest reduction, a DiT's patch), noised to step t, and the chosen block is resampled to the stride-16 grid (H / 16, W / 16): ADM-256's b = 24 has
reduction 16, so with the U-Net at the detector's size no resampling happens at all. From that one map
the pyramid builds strides 4, 8, 16, 32 (transposed convs, identity, max-pool; each then a 1x1 and a 3x3
conv to ``out_channels`` with LayerNorm) and 64 (max-pooled), as ViTDet does for a plain ViT.

Noise is drawn per image from seeds the task sets before each call (:meth:`DetectionBackbone.set_seeds`),
so that a batch's noise does not depend on which process or batch the image is in.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models import Backbone
from .adapter import noisy_features

SCALES = (4.0, 2.0, 1.0, 0.5)
LEVEL_NAMES = ("p2", "p3", "p4", "p5", "p6")  # strides 4, 8, 16, 32, 64
STRIDE = 16


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of every position of [N, C, H, W] maps (ViTDet's 'LN')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """One stride-16 map [N, C, h, w] to maps of ``out_channels`` at strides 4, 8, 16, 32 and 64 (p2..p6)."""

    def __init__(self, in_channels: int, out_channels: int = 256, scales: Sequence[float] = SCALES) -> None:
        super().__init__()
        if tuple(scales) != SCALES:
            raise UserError(f"pyramid scales {list(scales)}: only ViTDet's {list(SCALES)} are built")
        if in_channels % 4:
            raise UserError(f"{in_channels} input channels: the stride-4 level needs a multiple of 4 "
                            "(set features.channels)")
        c = in_channels
        self.stages = nn.ModuleList()
        for scale, width in zip(scales, (c // 4, c // 2, c, c)):
            layers: list[nn.Module] = []
            if scale == 4.0:
                layers = [nn.ConvTranspose2d(c, c // 2, 2, 2), LayerNorm2d(c // 2), nn.GELU(),
                          nn.ConvTranspose2d(c // 2, c // 4, 2, 2)]
            elif scale == 2.0:
                layers = [nn.ConvTranspose2d(c, c // 2, 2, 2)]
            elif scale == 0.5:
                layers = [nn.MaxPool2d(2, 2)]
            layers += [nn.Conv2d(width, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        levels = [stage(x) for stage in self.stages]
        levels.append(F.max_pool2d(levels[-1], 1, 2))
        return OrderedDict(zip(LEVEL_NAMES, levels))


class DetectionBackbone(nn.Module):
    """torchvision's detector backbone interface (``out_channels``; images to an ordered dict of maps) on
    block ``block`` of ``backbone`` at noise step ``t``."""

    def __init__(self, backbone: Backbone, t: int, block: int | str, input_size: int, detector_size: int,
                 out_channels: int = 256, channels: int | None = None, finetune: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.t = backbone.validate_timesteps([t])[0]
        [self.block] = backbone.validate_blocks([block])
        self.multiple = backbone.size_multiple
        if input_size < 1 or input_size % self.multiple:
            raise UserError(f"features.input_size={input_size}: use a positive multiple of {self.multiple}, what this "
                            f"{type(backbone).__name__}'s input sides must be a multiple of")
        if detector_size < 1 or detector_size % 32:
            raise UserError(f"data.size={detector_size}: use a positive multiple of 32 (the pyramid's coarsest stride)")
        self.input_size, self.detector_size, self.finetune = input_size, detector_size, finetune
        width = backbone.block_info(self.block).num_chs
        self.proj = nn.Conv2d(width, channels, 1) if channels else nn.Identity()
        self.pyramid = SimpleFeaturePyramid(channels or width, out_channels)
        self.out_channels = out_channels
        self.seeds: list[int] | None = None

    def set_seeds(self, seeds: Sequence[int] | None) -> None:
        """The noise seed of each image of the next batch (None: image i of a batch takes seed i)."""
        self.seeds = None if seeds is None else list(seeds)

    def unet_size(self, height: int, width: int) -> tuple[int, int]:
        """The backbone's input size for a detector batch of ``height`` x ``width``."""
        m, factor = self.multiple, self.input_size / self.detector_size
        return max(round(height * factor / m), 1) * m, max(round(width * factor / m), 1) * m

    def _noise(self, n: int, height: int, width: int) -> torch.Tensor | None:
        if not self.backbone.takes_timestep:
            return None
        seeds = self.seeds if self.seeds is not None else list(range(n))
        if len(seeds) != n:
            raise UserError(f"{len(seeds)} noise seeds for a batch of {n} images")
        c, h, _ = self.backbone.input_shape
        shape = (c, height * h // self.backbone.image_size, width * h // self.backbone.image_size)
        return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(s)) for s in seeds])

    def _grad(self) -> contextlib.AbstractContextManager:
        trainable = self.finetune or bool(self.backbone.trainable_with_head())
        return contextlib.nullcontext() if trainable and torch.is_grad_enabled() else torch.no_grad()

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        n, _, height, width = images.shape
        size = self.unet_size(height, width)
        x = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear",
                                                                 align_corners=False)
        noise = self._noise(n, *size)
        with self._grad():
            feature = noisy_features(self.backbone, x, self.t, None if noise is None else noise.to(x.device),
                                     [self.block])[self.block]
        grid = (height // STRIDE, width // STRIDE)
        feature = self.proj(feature.float())
        if feature.shape[-2:] != grid:
            feature = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
        return self.pyramid(feature)
