"""Building blocks of the ADM U-Net (Dhariwal & Nichol, 2021).

Each module keeps the parameter names of guided-diffusion's checkpoints, so their state dicts
load unchanged; the computation is written for speed (fused scaled-dot-product attention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer noise steps: [cos(t w_i), sin(t w_i)], in float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, always computed in float32 (ADM's fp16 recipe)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)

    def modulated(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``norm(x) * (1 + scale) + shift`` (AdaGN) with the affine folded into the per-sample scale and
        shift, so the full-size tensor is written twice (normalise, modulate) instead of three times."""
        gain = 1 + scale.float()
        weight = self.weight.float()[:, None, None] * gain
        bias = torch.addcmul(shift.float(), self.bias.float()[:, None, None], gain)
        normed = F.group_norm(x.float(), self.num_groups, None, None, self.eps)
        if normed.requires_grad:
            return torch.addcmul(bias, normed, weight).type(x.dtype)
        return torch.addcmul(bias, normed, weight, out=normed).type(x.dtype)  # no second full-size buffer


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a freshly made tensor, in place when no gradient flows through it (saves a full-size
    allocation per call; with autograd recording, it stays out of place)."""
    return F.silu(x, inplace=not x.requires_grad)


def zero_init(module: nn.Module) -> nn.Module:
    """ADM initialises the last layer of every residual branch to zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 conv, or average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        elif out_channels != channels:
            raise UserError("average-pool downsampling cannot change the channel count")
        else:
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour), optionally followed by a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None
        if self.conv is None and out_channels != channels:
            raise UserError("upsampling without a conv cannot change the channel count")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the noise-step embedding.

    With ``use_scale_shift_norm`` the embedding gives a scale and shift applied after the second
    GroupNorm (AdaGN); otherwise it is added before it. ``up``/``down`` resample inside the block
    (BigGAN style), which is how ADM's ``resblock_updown`` changes resolution.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.resample: nn.Module | None = None
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, _, conv = self.in_layers
        h = silu(norm(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = conv(h)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        out_norm, _, dropout, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_norm.modulated(h, scale, shift)
        else:
            h = out_norm(h.add_(emb_out))  # in place: a conv's backward does not read its output
        h = out_conv(dropout(silu(h)))
        return h.add_(self.skip_connection(x))


def split_heads(qkv: torch.Tensor, num_heads: int, legacy_order: bool) -> tuple[torch.Tensor, ...]:
    """Split a [B, 3*H*C, T] qkv projection into q, k, v of shape [B, H, T, C].

    The legacy order (the public 256x256 checkpoints) lays channels out head-major
    (H, [q k v], C); the new order is qkv-major ([q k v], H, C). One copy puts the channels last,
    so q, k and v have unit stride in C: the condition for PyTorch's fused attention kernels (on
    the CPU, views with channels strided by T fall back to the unfused, slower math path).
    """
    batch, width, length = qkv.shape
    head_dim = width // (3 * num_heads)
    tokens = qkv.transpose(1, 2).contiguous()
    if legacy_order:
        q, k, v = tokens.view(batch, length, num_heads, 3 * head_dim).split(head_dim, dim=3)
    else:
        q, k, v = tokens.view(batch, length, 3, num_heads, head_dim).unbind(2)
    return tuple(z.transpose(1, 2) for z in (q, k, v))


def attend(qkv: torch.Tensor, num_heads: int, legacy_order: bool) -> torch.Tensor:
    """Multi-head self-attention over a [B, 3*H*C, T] projection; returns [B, H*C, T]."""
    q, k, v = split_heads(qkv, num_heads, legacy_order)
    out = F.scaled_dot_product_attention(q, k, v)
    batch, heads, length, head_dim = out.shape
    return out.transpose(-1, -2).reshape(batch, heads * head_dim, length)


def resolve_num_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    if num_head_channels == -1:
        if channels % num_heads:
            raise UserError(f"{channels} channels do not split into num_heads={num_heads}")
        return num_heads
    if channels % num_head_channels:
        raise UserError(f"{channels} channels do not split into heads of {num_head_channels}")
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection (all positions attend to all)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = resolve_num_heads(channels, num_heads, num_head_channels)
        self.legacy_order = not use_new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        h = attend(self.qkv(self.norm(x)), self.num_heads, self.legacy_order)
        return self.proj_out(h).add_(x).reshape(batch, channels, *spatial)


class AttentionPool2d(nn.Module):
    """The noisy classifiers' head: the mean token attends over all positions (new order)."""

    def __init__(self, spatial_size: int, channels: int, head_channels: int, out_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(channels, spatial_size**2 + 1) / channels**0.5
        )
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_dim, 1)
        self.num_heads = resolve_num_heads(channels, 1, head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        h = attend(self.qkv_proj(x), self.num_heads, legacy_order=False)
        return self.c_proj(h)[:, :, 0]


class EmbedSequential(nn.Sequential):
    """A U-Net block: a sequence of layers where residual blocks also see the step embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x
