"""The Attention head and DifFormer: transformer heads over tokens made from U-Net feature maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingKeyError, UserError

Norm = Literal["layernorm", "batchnorm"]


class Tokenizer(nn.Module):
    """Feature map [N, C, H, W] to s*s tokens of width ``dim``: adaptive average pool to
    s = min(H, max_size), normalise over [C, s, s] (LayerNorm) or per channel (BatchNorm), 1x1 conv."""

    def __init__(self, channels: int, size: int, dim: int = 1024, max_size: int = 16, norm: Norm = "layernorm") -> None:
        super().__init__()
        self.size = min(size, max_size)
        if norm == "layernorm":
            self.norm: nn.Module = nn.LayerNorm([channels, self.size, self.size])
        elif norm == "batchnorm":
            self.norm = nn.BatchNorm2d(channels)
        else:
            raise UserError(f"norm={norm!r}: use 'layernorm' or 'batchnorm'")
        self.proj = nn.Conv2d(channels, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, self.size)
        return self.proj(self.norm(x)).flatten(2).transpose(1, 2)


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + MHSA(LN(x)), then x + MLP(LN(x)); no qkv bias, GELU.

    The paper calls these the head's "transformer blocks"; difrep says layer, keeping "block" for U-Net blocks b."""

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise UserError(f"dim {dim} does not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, dim)
        x = x + self.proj(attn)
        return x + self.mlp(self.norm2(x))


class ClsTransformer(nn.Module):
    """A learned CLS token (zero-initialised) prepended to the tokens, ``depth`` layers, final LayerNorm; returns CLS."""

    def __init__(self, dim: int = 1024, depth: int = 2, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.layers = nn.Sequential(*[TransformerLayer(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        return self.norm(self.layers(x))[:, 0]


class AttentionHead(nn.Module):
    """The paper's Attention head on one feature f(x0, t, b): tokenizer, CLS transformer, Linear."""

    def __init__(
        self,
        channels: int,
        size: int,
        num_classes: int,
        dim: int = 1024,
        depth: int = 2,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        max_tokens_size: int = 16,
        norm: Norm = "layernorm",
    ) -> None:
        super().__init__()
        self.tokenizer = Tokenizer(channels, size, dim, max_tokens_size, norm)
        self.transformer = ClsTransformer(dim, depth, num_heads, mlp_ratio)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(self.transformer(self.tokenizer(feature)))


class DifFormer(nn.Module):
    """Fusion across noise steps T and blocks B: one tokenizer per block; for each t the tokens of
    all blocks share one CLS transformer (shared across t); the |T| CLS outputs are concatenated
    into one Linear."""

    def __init__(
        self,
        block_shapes: dict[int, tuple[int, int]],
        timesteps: Sequence[int],
        num_classes: int,
        dim: int = 1024,
        depth: int = 2,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        max_tokens_size: int = 16,
        norm: Norm = "layernorm",
    ) -> None:
        super().__init__()
        self.blocks = sorted(block_shapes)
        self.timesteps = list(timesteps)
        self.tokenizers = nn.ModuleDict(
            {str(b): Tokenizer(c, s, dim, max_tokens_size, norm) for b, (c, s) in sorted(block_shapes.items())}
        )
        self.transformer = ClsTransformer(dim, depth, num_heads, mlp_ratio)
        self.fc = nn.Linear(dim * len(self.timesteps), num_classes)

    def forward(self, features: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        missing = [(t, b) for t in self.timesteps for b in self.blocks if (t, b) not in features]
        if missing:
            raise MissingKeyError(f"DifFormer needs features {missing}")
        cls = [
            self.transformer(torch.cat([self.tokenizers[str(b)](features[(t, b)]) for b in self.blocks], dim=1))
            for t in self.timesteps
        ]
        return self.fc(torch.cat(cls, dim=1))
