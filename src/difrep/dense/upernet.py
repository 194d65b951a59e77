"""UperNet on backbone features (the paper's Table 6): segmentation_models_pytorch's UPerNetDecoder.

The decoder is smp's (pyramid pooling over 1, 2, 3, 6 on the coarsest level, an FPN over the others,
every level fused at stride 4); difrep adds what mmsegmentation's UPerHead recipe has and smp's decoder
does not: the classifier (dropout 0.1, 1x1 conv) and the auxiliary FCN head on the stride-16 level
(3x3 conv, norm, ReLU, dropout, 1x1 conv; its loss weighted 0.4 in training). Two differences from
mmsegmentation's head, both smp's: each input level first goes through a LayerNorm over channels, and
the norm layers are BatchNorm (``norm="groupnorm"`` swaps every one for GroupNorm, which does not
depend on the batch). smp's own ``use_norm="layernorm"`` normalises over the width of conv maps, not
their channels, so difrep never uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models.optional import optional_import
from .adapter import STRIDES, DenseFeatures

NORMS = ("batchnorm", "groupnorm")


def _groupnorm_for_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by a GroupNorm of 32 groups (fewer for narrow layers: at least 2 channels a
    group, so that the pyramid pooling's 1x1 maps still have more than one value to normalise)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0 and (c // g >= 2 or g == 1))
            setattr(module, name, nn.GroupNorm(groups, c))
        else:
            _groupnorm_for_batchnorm(child)
    return module


class UperNet(nn.Module):
    """Dense features -> smp UPerNetDecoder -> class scores at the crop's size (and the auxiliary head's)."""

    def __init__(self, features: DenseFeatures, channels: int, num_classes: int, decoder_channels: int = 512,
                 aux_channels: int = 256, dropout: float = 0.1, norm: str = "batchnorm") -> None:
        super().__init__()
        if norm not in NORMS:
            raise UserError(f"head.norm={norm!r}: use {' or '.join(NORMS)}")
        upernet = optional_import("segmentation_models_pytorch.decoders.upernet.decoder", "the UperNet head")
        self.features = features
        self.decoder = upernet.UPerNetDecoder(encoder_channels=[3, 0, *[channels] * len(STRIDES)], encoder_depth=5,
                                              decoder_channels=decoder_channels, use_norm="batchnorm")
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(decoder_channels, num_classes, 1))
        self.aux = nn.Sequential(
            nn.Conv2d(channels, aux_channels, 3, padding=1, bias=False), nn.BatchNorm2d(aux_channels), nn.ReLU(),
            nn.Dropout2d(dropout), nn.Conv2d(aux_channels, num_classes, 1),
        )
        if norm == "groupnorm":
            _groupnorm_for_batchnorm(self.decoder)
            _groupnorm_for_batchnorm(self.aux)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                with_aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Class scores [N, K, crop, crop]; with ``with_aux`` also the auxiliary head's."""
        levels = self.features(images, noise)
        size = images.shape[-2:]
        decoded = self.decoder([images, images, *levels])  # smp skips its two finest inputs
        logits = F.interpolate(self.classifier(decoded), size=size, mode="bilinear", align_corners=False)
        if not with_aux:
            return logits
        aux = F.interpolate(self.aux(levels[2]), size=size, mode="bilinear", align_corners=False)
        return logits, aux
