"""Backbone features for dense decoders: blocks at one noise step t, mapped to a four-level pyramid.

The paper (Table 6) maps each chosen U-Net block through a 1x1 conv to the decoder's width and
resizes it bilinearly to the four input shapes of an UperNet (strides 4, 8, 16, 32 of the crop). One
block serves all four levels (b = 24); four blocks go from the highest resolution to the lowest
({33, 30, 27, 24} -> strides 4, 8, 16, 32). The crop is resized to the backbone's input size first
(512 -> 256 for the 256-pixel U-Net), which any backbone of the interface accepts (ADM runs at other
sizes than it was trained at). With ``feedback`` the features come from DifFeed's second pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..heads import Feedback, feedback_pairs
from ..models import Backbone

STRIDES = (4, 8, 16, 32)


def noisy_features(backbone: Backbone, images: torch.Tensor, t: int, noise: torch.Tensor | None,
                   blocks: Sequence[int], feedback: Feedback | None = None) -> dict[int, torch.Tensor]:
    """Blocks of ``backbone`` on ``images`` in [-1, 1] noised to step ``t`` with ``noise`` (None without t)."""
    x0 = backbone.encode(images)
    steps = torch.full((len(x0),), t, dtype=torch.long, device=x0.device)
    if backbone.takes_timestep:
        if noise is None or noise.shape != x0.shape:
            raise UserError(f"noise must be {tuple(x0.shape)} for these images, got "
                            f"{None if noise is None else tuple(noise.shape)}")
        x0 = backbone.diffusion.q_sample(x0, steps, noise.to(x0))
    additions = None
    if feedback is not None:
        additions = feedback(feedback.first_pass(x0, steps), x0.shape[-1])
    return backbone.forward_intermediates(x0, steps, indices=sorted(set(blocks)), stop_early=True,
                                         **({"feedback": additions} if additions else {}))


class DenseFeatures(nn.Module):
    """Images [N, 3, crop, crop] in [-1, 1] to four maps [N, channels, crop / s, crop / s], s = 4, 8, 16, 32."""

    def __init__(self, backbone: Backbone, t: int, blocks: Sequence[int | str], channels: int, input_size: int,
                 feedback: str | None = None, finetune: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.t = backbone.validate_timesteps([t])[0]
        self.blocks = backbone.validate_blocks(blocks)
        if len(self.blocks) not in (1, len(STRIDES)):
            raise UserError(f"features.blocks={list(blocks)}: give 1 block (all levels) or {len(STRIDES)} (one a level)")
        by_size = sorted(set(self.blocks), key=lambda b: -backbone.block_info(b).resolution)
        self.levels = by_size * len(STRIDES) if len(by_size) == 1 else by_size
        coarsest = backbone.size_multiple
        if input_size < 1 or input_size % coarsest:  # a U-Net's skips must meet the upsampled maps exactly
            raise UserError(f"features.input_size={input_size}: use a positive multiple of {coarsest}, what this "
                            f"{type(backbone).__name__}'s input sides must be a multiple of")
        self.input_size, self.finetune = input_size, finetune
        self.proj = nn.ModuleDict({str(b): nn.Conv2d(backbone.block_info(b).num_chs, channels, 1) for b in by_size})
        self.feedback: Feedback | None = None
        if feedback is not None:
            if not backbone.takes_timestep or not any(i.stage == "decoder" for i in backbone.feature_info):
                raise UserError("features.feedback needs a diffusion U-Net with a decoder")
            self.feedback = Feedback(backbone, feedback_pairs(backbone, feedback, min(self.blocks)))  # type: ignore[arg-type]

    def noise_shape(self) -> tuple[int, int, int]:
        """The shape of one image's noise at ``input_size`` (x0 = backbone.encode of the resized crop)."""
        c, h, _ = self.backbone.input_shape
        size = self.input_size * h // self.backbone.image_size
        return (c, size, size)

    def _grad(self) -> contextlib.AbstractContextManager:
        trainable = self.finetune or self.feedback is not None or bool(self.backbone.trainable_with_head())
        return contextlib.nullcontext() if trainable and torch.is_grad_enabled() else torch.no_grad()

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None) -> list[torch.Tensor]:
        """The pyramid for ``images``; ``noise`` [N, *noise_shape()] (None for a backbone without t)."""
        crop = images.shape[-1]
        x = images
        if crop != self.input_size:
            x = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        with self._grad():
            feats = noisy_features(self.backbone, x, self.t, noise, self.blocks, self.feedback)
        out = []
        for b, stride in zip(self.levels, STRIDES):
            f = self.proj[str(b)](feats[b].float())
            size = max(crop // stride, 1)
            if f.shape[-1] != size or f.shape[-2] != size:
                f = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)
            out.append(f)
        return out
