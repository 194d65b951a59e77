"""The one backbone interface that the extractor, the heads, the engine and every evaluation use.

A backbone numbers its feature blocks b = 1..N (``feature_info``) and returns the activations after
them from ``forward_intermediates(x, t, indices, stop_early)``. Diffusion backbones (ADM, diffusers
U-Nets, Stable Diffusion) carry their noise schedule (``diffusion``) and take a noise step t; other
backbones (timm) have ``diffusion = None``, accept and ignore t, and are run once per image.
``encode`` turns difrep's images (in [-1, 1]) into what the backbone takes: the identity for ADM,
the model's own mean/std for timm, VAE latents for Stable Diffusion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..errors import UserError


@dataclass(frozen=True)
class BlockInfo:
    """One feature block: its paper number b, where it lives and what it outputs."""

    index: int
    module: str
    stage: str  # "encoder", "middle" or "decoder" for U-Nets; "encoder" for backbones without a decoder
    num_chs: int
    reduction: int
    resolution: int


class Backbone(nn.Module):
    """Base class of difrep's backbones: the block table and what every consumer may ask of it.

    Subclasses set ``_blocks`` (the full numbering), ``diffusion`` and ``image_size``, and implement
    ``forward_intermediates`` and ``prune_intermediate_layers``.
    """

    diffusion: GaussianDiffusion | None = None
    image_size: int
    _blocks: list[BlockInfo]
    _num_encoder_blocks: int = 0
    _pruned_after: int | None = None

    @property
    def takes_timestep(self) -> bool:
        """Whether features depend on a noise step t (else t is ignored and extraction runs once)."""
        return self.diffusion is not None

    @property
    def feature_info(self) -> list[BlockInfo]:
        return list(self._blocks)

    @property
    def num_blocks(self) -> int:
        """The deepest block's number (blocks run first_block..num_blocks)."""
        return self._blocks[-1].index

    @property
    def first_block(self) -> int:
        """1, or 0 where a backbone numbers its input embedding (DiT's patch embedding)."""
        return self._blocks[0].index

    @property
    def middle_block_index(self) -> int:
        """The block in the middle of the network: a U-Net's bottleneck."""
        return self.num_encoder_blocks + 1

    @property
    def num_encoder_blocks(self) -> int:
        """Encoder blocks of the full model (the numbering does not change when the model is pruned)."""
        return self._num_encoder_blocks

    @property
    def block_aliases(self) -> dict[str, int]:
        """Other tools' names for blocks (e.g. ``dift:1``), accepted wherever a block number is."""
        return {}

    @property
    def size_multiple(self) -> int:
        """What image sides must be a multiple of: a U-Net's coarsest reduction (its skips meet the upsampled
        maps exactly); 1 for a backbone without a decoder."""
        if not any(info.stage == "decoder" for info in self._blocks):
            return 1
        return max(info.reduction for info in self._blocks)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape [C, H, W] of one input of ``forward_intermediates`` (and of its noise)."""
        return (3, self.image_size, self.image_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """difrep's images ([-1, 1], [N, 3, image_size, image_size]) as this backbone's input x0."""
        return images

    def block_info(self, b: int | str) -> BlockInfo:
        """The :attr:`feature_info` entry of block b, checked."""
        return self._blocks[self.validate_blocks([b])[0] - self.first_block]

    def block_modules(self, b: int) -> list[nn.Module]:
        """Every module block b runs."""
        return [self.get_submodule(self.block_info(b).module)]

    def validate_blocks(self, indices: Iterable[int | str]) -> list[int]:
        """Block numbers (or :attr:`block_aliases`) checked against this model, with an error that
        lists the valid range."""
        blocks = [self._resolve(b) for b in indices]
        bad = [b for b in blocks if not self.first_block <= b <= self.num_blocks]
        if bad and self._pruned_after is not None:
            raise UserError(f"block(s) {bad} are not in this model: it was pruned after block {self._pruned_after}")
        if bad:
            raise UserError(f"block(s) {bad} do not exist in this model: valid blocks are {self._describe_range()}")
        return blocks

    def _resolve(self, b: int | str) -> int:
        if isinstance(b, str) and not b.strip().lstrip("-").isdigit():
            aliases = self.block_aliases
            if b not in aliases:
                known = f"known names: {', '.join(aliases)}" if aliases else "this backbone has no block names"
                raise UserError(f"block {b!r} is not a block number nor a block name of this model ({known})")
            return aliases[b]
        return int(b)

    def _describe_range(self) -> str:
        stages: dict[str, list[int]] = {}
        for info in self._blocks:
            stages.setdefault(info.stage, []).append(info.index)
        span = f"{self.first_block}..{self.num_blocks}"
        if list(stages) == ["encoder"]:
            return span
        parts = [f"{s} {v[0]}" if len(v) == 1 else f"{s} {v[0]}..{v[-1]}" for s, v in stages.items()]
        return f"{span} ({', '.join(parts)})"

    def mirror_block(self, b: int) -> int:
        """The encoder block whose skip decoder block b consumes (38 - b for the ADM 256 model)."""
        return 2 * self.num_encoder_blocks + 2 - b

    def validate_timesteps(self, timesteps: Iterable[int]) -> list[int]:
        """Noise steps checked against the schedule; any value is accepted (and ignored) without one."""
        values = [int(t) for t in timesteps]
        if self.diffusion is None:
            return values
        return [int(t) for t in self.diffusion.validate_timesteps(values)]

    def trainable_with_head(self) -> list[nn.Parameter]:
        """Parameters trained together with a head even when the backbone is frozen (SD's learnable text)."""
        return []

    def freeze(self) -> None:
        """Freeze the backbone for a head, keeping :meth:`trainable_with_head` trainable."""
        self.requires_grad_(False)
        for p in self.trainable_with_head():
            p.requires_grad_(True)

    def random_copy(self) -> Backbone:
        """The same architecture with its weights as they initialise (seed with ``torch.manual_seed`` first): the
        random-init control. Its input pipeline (a VAE, SD's text context) stays the trained one's."""
        raise UserError(f"{type(self).__name__} has no random-init copy")

    def describe(self) -> dict[str, Any]:
        """What a cache manifest or a run records about this backbone's configuration."""
        return {"type": type(self).__name__}

    def _batch_timesteps(self, t: torch.Tensor | int | Iterable[int], batch: int,
                         device: torch.device) -> torch.Tensor:
        """Noise steps as a [batch] tensor on ``device``: host values are checked against the schedule (free), a
        device tensor is taken as it is (checking it would cost a host round trip per call)."""
        if not isinstance(t, torch.Tensor) or t.device.type == "cpu":
            t = self.diffusion.validate_timesteps(t)
        t = t.to(device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise UserError(f"timesteps must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        return t

    def _check_output_request(self, stop_early: bool, intermediates_only: bool) -> None:
        """Refuse to return the output layer's result where it is skipped (stop_early) or gone (pruned)."""
        if stop_early and not intermediates_only:
            raise UserError("stop_early=True skips the output layer: use intermediates_only=True")
        if self._pruned_after is not None and not intermediates_only:
            raise UserError("this model was pruned (prune_intermediate_layers): it has features, not an output")

    def _check_feedback(self, feedback: Mapping[int, torch.Tensor] | None) -> dict[int, torch.Tensor]:
        feedback = dict(feedback or {})
        if any(not 1 <= b <= self.num_encoder_blocks for b in feedback):
            raise UserError(f"feedback targets must be encoder blocks 1..{self.num_encoder_blocks}")
        return feedback

