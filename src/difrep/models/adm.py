"""The ADM U-Net of guided-diffusion and its encoder half (the noisy classifier), as feature backbones.

Block numbering follows the paper: every ``input_blocks`` entry is one block (1..N), the
``middle_block`` is N+1 and every ``output_blocks`` entry is one block (N+2..2N+1). The feature
f(x0, t, b) is the activation after block b. Decoder block b takes the skip of encoder block
2N+2-b, which lets ``forward_intermediates`` keep only the skips it will use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..errors import UserError
from .backbone import Backbone, BlockInfo
from .layers import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    EmbedSequential,
    GroupNorm32,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_init,
)

DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def _parse_numbers(value: str | Iterable[int | float], name: str) -> tuple[float, ...]:
    if isinstance(value, str):
        try:
            return tuple(float(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise UserError(f"{name}={value!r} is not a comma-separated list of numbers") from None
    return tuple(value)


@dataclass(frozen=True)
class ADMConfig:
    """guided-diffusion's model flags, with the same names and defaults (``script_util.py``)."""

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    attention_resolutions: str | tuple[int, ...] = "16,8"
    channel_mult: str | tuple[float, ...] = ""
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    conv_resample: bool = True
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    class_cond: bool = False
    num_classes: int = 1000
    dropout: float = 0.0
    in_channels: int = 3
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"

    def resolved_channel_mult(self) -> tuple[float, ...]:
        if self.channel_mult in ("", ()):
            if self.image_size not in DEFAULT_CHANNEL_MULT:
                raise UserError(
                    f"image_size={self.image_size} has no default channel_mult "
                    f"(known: {sorted(DEFAULT_CHANNEL_MULT)}); pass channel_mult explicitly"
                )
            return DEFAULT_CHANNEL_MULT[self.image_size]
        return _parse_numbers(self.channel_mult, "channel_mult")

    def attention_downsample_rates(self) -> set[int]:
        """Attention resolutions are given in pixels; blocks are placed by downsample rate."""
        resolutions = _parse_numbers(self.attention_resolutions, "attention_resolutions")
        return {self.image_size // int(r) for r in resolutions}


@dataclass(frozen=True)
class ADMEncoderConfig(ADMConfig):
    """The encoder half with a classification head: guided-diffusion's ``EncoderUNetModel``."""

    out_channels: int = 1000
    pool: Literal["attention", "adaptive"] = "attention"


@dataclass
class _LayoutBuilder:
    image_size: int
    info: list[BlockInfo] = field(default_factory=list)

    def add(self, module: str, stage: str, channels: int, ds: int) -> None:
        self.info.append(
            BlockInfo(len(self.info) + 1, module, stage, channels, ds, self.image_size // ds)
        )


class _ADMTrunk(Backbone):
    """Time embedding, encoder blocks and middle block: shared by the U-Net and the encoder."""

    def __init__(self, config: ADMConfig) -> None:
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.diffusion = GaussianDiffusion(config.diffusion_steps, config.noise_schedule)
        mult = config.resolved_channel_mult()
        attn_ds = config.attention_downsample_rates()
        model_ch = config.num_channels
        emb_ch = 4 * model_ch
        self.time_embed = nn.Sequential(
            nn.Linear(model_ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
        )
        self.num_classes = config.num_classes if config.class_cond else None
        if self.num_classes is not None:
            self.label_emb = nn.Embedding(self.num_classes, emb_ch)

        layout = _LayoutBuilder(config.image_size)
        ch = int(mult[0] * model_ch)
        self.input_blocks = nn.ModuleList(
            [EmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))]
        )
        layout.add("input_blocks.0", "encoder", ch, 1)
        self._skip_channels = [ch]
        ds = 1
        for level, m in enumerate(mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [self._resblock(ch, int(m * model_ch))]
                ch = int(m * model_ch)
                if ds in attn_ds:
                    layers.append(self._attention(ch, config.num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                layout.add(f"input_blocks.{len(self.input_blocks) - 1}", "encoder", ch, ds)
                self._skip_channels.append(ch)
            if level != len(mult) - 1:
                down = (
                    self._resblock(ch, ch, down=True)
                    if config.resblock_updown
                    else Downsample(ch, config.conv_resample)
                )
                self.input_blocks.append(EmbedSequential(down))
                ds *= 2
                layout.add(f"input_blocks.{len(self.input_blocks) - 1}", "encoder", ch, ds)
                self._skip_channels.append(ch)
        self.middle_block = EmbedSequential(
            self._resblock(ch, ch), self._attention(ch, config.num_heads), self._resblock(ch, ch)
        )
        layout.add("middle_block", "middle", ch, ds)
        self._layout = layout
        self._blocks = layout.info
        self._num_encoder_blocks = len(self.input_blocks)
        self._ch, self._ds, self._mult = ch, ds, mult

    def _resblock(self, ch: int, out_ch: int, up: bool = False, down: bool = False) -> ResBlock:
        cfg = self.config
        return ResBlock(
            ch, 4 * cfg.num_channels, cfg.dropout, out_ch, cfg.use_scale_shift_norm, up=up, down=down
        )

    def _attention(self, ch: int, num_heads: int) -> AttentionBlock:
        cfg = self.config
        return AttentionBlock(ch, num_heads, cfg.num_head_channels, cfg.use_new_attention_order)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.config.in_channels, self.image_size, self.image_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """difrep's RGB images as this model's input x0: for a one-channel (grey) model their channel mean,
        exact for grey data sets, which difrep reads as RGB so that every backbone takes the same images."""
        channels = self.config.in_channels
        if images.ndim == 4 and images.shape[1] == channels:
            return images
        if images.ndim == 4 and channels == 1 and images.shape[1] == 3:
            return images.mean(dim=1, keepdim=True)
        raise UserError(f"this model reads {channels}-channel images; got a batch of shape {tuple(images.shape)}")

    def random_copy(self) -> _ADMTrunk:
        return type(self)(self.config).to(next(self.parameters()).device)

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)

    def prune_intermediate_layers(self, indices: Iterable[int]) -> int:
        """Drop every block after the deepest of ``indices``, and the output layer (timm's name).

        For a model that only serves features: nothing that cannot reach a requested feature stays,
        so fine-tuning leaves no parameter without a gradient (which DDP refuses) and a checkpoint
        of the fine-tuned model holds only what is used. Block numbers keep their meaning; asking
        for a dropped block or for the model's output afterwards is an error. Returns the deepest
        block kept.
        """
        last = max(self.validate_blocks(indices))
        enc = self.num_encoder_blocks
        self.input_blocks = self.input_blocks[:last] if last <= enc else self.input_blocks
        if last <= enc:
            self.middle_block = None
        if hasattr(self, "output_blocks"):
            self.output_blocks = self.output_blocks[: max(last - enc - 1, 0)]
        self.out = None
        self._blocks = self._blocks[:last]
        self._pruned_after = last
        return last

    def embed(
        self, t: torch.Tensor | int | Sequence[int], batch: int, y: torch.Tensor | None
    ) -> torch.Tensor:
        weight = self.time_embed[0].weight
        t = self._batch_timesteps(t, batch, weight.device)
        emb = self.time_embed(timestep_embedding(t, self.config.num_channels).to(weight.dtype))
        if self.num_classes is not None:
            if y is None:
                raise UserError("this model is class-conditional: pass class labels y")
            emb = emb + self.label_emb(y)
        elif y is not None:
            raise UserError("this model is unconditional: class labels y are not accepted")
        return emb

    def _run_trunk(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        wanted: set[int],
        last: int,
        keep_skips_from: int,
        feedback: Mapping[int, torch.Tensor],
        out: dict[int, torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Run encoder blocks and the middle block up to block ``last``.

        Skips of encoder blocks below ``keep_skips_from`` are never read by the requested
        decoder blocks, so they are dropped as soon as they are consumed by the next block.
        """
        skips: list[torch.Tensor | None] = []
        h = x
        for b, block in enumerate(self.input_blocks, start=1):
            if b > last:
                return h, skips
            h = block(h, emb)
            if b in feedback:
                h = h + feedback[b].to(h.dtype)
            skips.append(h if b >= keep_skips_from else None)
            if b in wanted:
                out[b] = h
        b = self.num_encoder_blocks + 1
        if b <= last:
            h = self.middle_block(h, emb)
            if b in wanted:
                out[b] = h
        return h, skips


    def _run_decoder(
        self,
        h: torch.Tensor,
        skips: list[torch.Tensor | None],
        emb: torch.Tensor,
        wanted: set[int],
        last: int,
        out: dict[int, torch.Tensor],
    ) -> torch.Tensor:
        """The encoder-only model has no decoder blocks."""
        return h

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The model's own output: eps (and variance) for the U-Net, logits for the classifier."""
        return self.forward_intermediates(x, t, indices=[], y=y, intermediates_only=False)[0]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int,
        indices: Iterable[int] | None = None,
        stop_early: bool = False,
        intermediates_only: bool = True,
        y: torch.Tensor | None = None,
        feedback: Mapping[int, torch.Tensor] | None = None,
    ) -> dict[int, torch.Tensor] | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Activations after the requested blocks b, keyed by b, in the order asked for.

        ``stop_early`` computes nothing after the deepest requested block. ``feedback`` maps an
        encoder block to a tensor added to its output (DifFeed's second pass). Returns the
        intermediates, or ``(output, intermediates)`` when ``intermediates_only`` is False.
        """
        blocks = self.validate_blocks(range(1, self.num_blocks + 1) if indices is None else indices)
        feedback = self._check_feedback(feedback)
        self._check_output_request(stop_early, intermediates_only)
        last = max(blocks, default=0) if stop_early else self.num_blocks
        keep_from = self.mirror_block(last) if last > self.num_encoder_blocks + 1 else last + 1
        emb = self.embed(t, x.shape[0], y)
        wanted, out = set(blocks), {}
        h, skips = self._run_trunk(x, emb, wanted, last, keep_from, feedback, out)
        h = self._run_decoder(h, skips, emb, wanted, last, out)
        ordered = {b: out[b] for b in blocks}
        if intermediates_only:
            return ordered
        return self.out(h), ordered


class ADMUNet(_ADMTrunk):
    """guided-diffusion's ``UNetModel``: predicts eps (and the variance interpolation if learn_sigma)."""

    def __init__(self, config: ADMConfig) -> None:
        super().__init__(config)
        model_ch, mult, attn_ds = config.num_channels, self._mult, config.attention_downsample_rates()
        ch, ds = self._ch, self._ds
        heads_up = config.num_heads_upsample if config.num_heads_upsample != -1 else config.num_heads
        skip_chs = list(self._skip_channels)
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(config.num_res_blocks + 1):
                layers: list[nn.Module] = [self._resblock(ch + skip_chs.pop(), int(model_ch * m))]
                ch = int(model_ch * m)
                if ds in attn_ds:
                    layers.append(self._attention(ch, heads_up))
                if level and i == config.num_res_blocks:
                    layers.append(
                        self._resblock(ch, ch, up=True)
                        if config.resblock_updown
                        else Upsample(ch, config.conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
                self._layout.add(f"output_blocks.{len(self.output_blocks) - 1}", "decoder", ch, ds)
        out_ch = config.in_channels * (2 if config.learn_sigma else 1)
        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), zero_init(nn.Conv2d(int(mult[0] * model_ch), out_ch, 3, padding=1))
        )

    def _run_decoder(
        self,
        h: torch.Tensor,
        skips: list[torch.Tensor | None],
        emb: torch.Tensor,
        wanted: set[int],
        last: int,
        out: dict[int, torch.Tensor],
    ) -> torch.Tensor:
        for j, block in enumerate(self.output_blocks):
            b = self.num_encoder_blocks + 2 + j
            if b > last:
                break
            h = block(torch.cat([h, skips.pop()], dim=1), emb)  # type: ignore[list-item]
            if b in wanted:
                out[b] = h
        return h


class ADMEncoder(_ADMTrunk):
    """guided-diffusion's ``EncoderUNetModel``: the noisy classifier, the paper's "U-Net Encoder"."""

    def __init__(self, config: ADMEncoderConfig) -> None:
        super().__init__(config)
        ch = self._ch
        if config.pool == "attention":
            if config.num_head_channels == -1:
                raise UserError("pool='attention' needs num_head_channels")
            pool: nn.Module = AttentionPool2d(
                config.image_size // self._ds, ch, config.num_head_channels, config.out_channels
            )
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), pool)
        elif config.pool == "adaptive":
            self.out = nn.Sequential(
                GroupNorm32(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d(1),
                zero_init(nn.Conv2d(ch, config.out_channels, 1)),
                nn.Flatten(),
            )
        else:
            raise UserError(f"pool={config.pool!r} is not supported: use 'attention' or 'adaptive'")
