"""Linear ("GD"), MLP and CNN heads on one pooled feature map (the paper's appendix, Tables 11-13)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


class LinearHead(nn.Module):
    """Adaptive average pool to pool x pool, flatten, one Linear (no batch norm): the paper's GD probe.

    Takes feature maps [N, C, H, W], or features already pooled and flattened [N, C * pool * pool]
    (as a feature cache stores them), so that online and cached probing train the same module.
    """

    def __init__(self, channels: int, num_classes: int, pool: int = 2) -> None:
        super().__init__()
        self.pool = pool
        self.fc = nn.Linear(channels * pool * pool, num_classes)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if feature.ndim == 2:
            return self.fc(feature)
        return self.fc(F.adaptive_avg_pool2d(feature, self.pool).flatten(1))


class MLPHead(nn.Module):
    """Pooled, flattened feature through Linear-GELU layers of the given hidden sizes, then a Linear."""

    def __init__(self, channels: int, num_classes: int, hidden: Sequence[int] = (1024,), pool: int = 2) -> None:
        super().__init__()
        self.pool = pool
        sizes = [channels * pool * pool, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.mlp(F.adaptive_avg_pool2d(feature, self.pool).flatten(1))


class CNNHead(nn.Module):
    """Two 3x3 conv-BN-ReLU layers with the given channel sizes, global average pool, Linear."""

    def __init__(self, channels: int, num_classes: int, conv_channels: Sequence[int] = (512, 256)) -> None:
        super().__init__()
        if len(conv_channels) != 2:
            raise UserError(f"the CNN head has two convolutions: give two channel sizes, got {list(conv_channels)}")
        layers: list[nn.Module] = []
        for a, b in zip([channels, conv_channels[0]], conv_channels):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(conv_channels[1], num_classes)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(feature).mean(dim=(2, 3)))
