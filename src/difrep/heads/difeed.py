"""DifFeed: decoder features of a first pass fed back into the encoder of a second pass on the same x_t."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..features.noise import noise_for_batch
from .attention import AttentionHead

Strategy = Literal["bottleneck", "all", "windowed", "multi-scale"]


def feedback_pairs(model: nn.Module, strategy: Strategy, feature_block: int) -> list[tuple[int, int]]:
    """(decoder block b, encoder block it feeds) pairs of a strategy (the paper's Table 4).

    bottleneck: every third decoder block from the second ({21, 24, ..., 36} for the 256 model), each
    into its mirror 38 - b; all: every decoder block into its mirror; windowed: the first five decoder
    blocks into their mirrors; multi-scale: the same five into the mirror of the feature block.
    """
    n = model.num_encoder_blocks
    decoder = list(range(n + 2, 2 * n + 2))
    if strategy == "bottleneck":
        sources = decoder[1::3]
    elif strategy == "all":
        sources = decoder
    elif strategy in ("windowed", "multi-scale"):
        sources = decoder[:5]
    else:
        raise UserError(f"strategy={strategy!r}: use bottleneck, all, windowed or multi-scale")
    if strategy == "multi-scale":
        return [(b, model.mirror_block(feature_block)) for b in sources]
    return [(b, model.mirror_block(b)) for b in sources]


class Feedback(nn.ModuleDict):
    """DifFeed's feedback: a layer per (decoder block b, encoder block e) pair, keyed ``"b_e"`` (1x1 conv
    without bias, BatchNorm, ReLU), mapping a first-pass decoder feature to e's width, bilinearly resized
    to e's size. Shared by the DifFeed head and the dense tasks."""

    def __init__(self, model: nn.Module, pairs: Sequence[tuple[int, int]]) -> None:
        model.validate_blocks([b for pair in pairs for b in pair])
        super().__init__({
            f"{b}_{e}": nn.Sequential(
                nn.Conv2d(model.block_info(b).num_chs, model.block_info(e).num_chs, 1, bias=False),
                nn.BatchNorm2d(model.block_info(e).num_chs), nn.ReLU()
            )
            for b, e in pairs
        })
        self.model = (model,)  # a tuple: the owner registers the backbone, not this module
        self.pairs = [(int(b), int(e)) for b, e in pairs]
        self._resolution = {e: model.block_info(e).resolution for _, e in self.pairs}
        self._image_size = model.image_size

    def first_pass(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[int, torch.Tensor]:
        """The decoder features the feedback layers read, from the frozen U-Net without gradient."""
        with torch.no_grad():
            return self.model[0].forward_intermediates(x_t, t, indices=sorted({b for b, _ in self.pairs}),
                                                       stop_early=True)

    def forward(self, first: dict[int, torch.Tensor], input_size: int) -> dict[int, torch.Tensor]:
        """What to add to each target encoder block's output for inputs of ``input_size`` pixels (block
        sizes scale with the input: a dense task may run the U-Net above its training size)."""
        additions: dict[int, torch.Tensor] = {}
        for b, e in self.pairs:
            f = self[f"{b}_{e}"](first[b])
            size = self._resolution[e] * input_size // self._image_size
            if f.shape[-1] != size:
                f = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)
            additions[e] = additions[e] + f if e in additions else f
        return additions


class DifFeed(nn.Module):
    """Two passes of the frozen U-Net at one noise step t, with learned feedback in between.

    The first pass runs without gradient and stops at the deepest feedback source. Each feedback
    layer (1x1 conv without bias, BatchNorm, ReLU) maps a decoder feature to the width of its target
    encoder block; the result, bilinearly resized if the sizes differ, is added to that block's output
    in the second pass, which stops at ``feature_block``; an Attention head classifies that feature.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        t: int = 150,
        feature_block: int = 24,
        strategy: Strategy = "bottleneck",
        pairs: Sequence[tuple[int, int]] | None = None,
        seed: int = 0,
        train_noise: Literal["fresh", "fixed"] = "fresh",
        **head_kwargs,
    ) -> None:
        super().__init__()
        self.model = model
        if not model.takes_timestep or not any(info.stage == "decoder" for info in model.feature_info):
            raise UserError(f"DifFeed feeds a diffusion U-Net's decoder features back into its encoder: this "
                            f"{type(model).__name__} has no decoder or no noise step")
        self.t = model.validate_timesteps([t])[0]
        self.feature_block = model.validate_blocks([feature_block])[0]
        self.feedback = Feedback(model, list(pairs) if pairs is not None else feedback_pairs(model, strategy, feature_block))
        self.pairs = self.feedback.pairs
        fb = model.block_info(self.feature_block)
        self.head = AttentionHead(fb.num_chs, fb.resolution, num_classes, **head_kwargs)
        if train_noise not in ("fresh", "fixed"):
            raise UserError(f"train_noise={train_noise!r}: use 'fresh' (the paper) or 'fixed' (per-image noise)")
        self.seed, self.train_noise = seed, train_noise

    def noisy(self, images: torch.Tensor, indices: Sequence[int] | None = None,
              noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t of the backbone's input x0 = ``model.encode(images)``, with ``noise`` if given; else fresh noise
        while training (unless ``train_noise='fixed'``) and per-image noise, seeded by the images' data-set
        ``indices``, otherwise."""
        x0 = self.model.encode(images)
        if noise is None and self.training and self.train_noise == "fresh":
            noise = torch.randn_like(x0)
        elif noise is None:
            noise = noise_for_batch(x0, indices, self.seed, 1, "DifFeed draws each image's evaluation noise "
                                    "from its position in the data set: pass indices=... (or noise=...)")[:, 0]
        if noise.shape != x0.shape:
            raise UserError(f"noise must have the backbone input's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return self.model.diffusion.q_sample(x0, self._steps(x0), noise.to(x0))

    def _steps(self, x: torch.Tensor) -> torch.Tensor:
        """The noise step t for every image, made on the images' device (no host round trip per pass)."""
        return torch.full((len(x),), self.t, dtype=torch.long, device=x.device)

    def first_pass(self, x_t: torch.Tensor) -> dict[int, torch.Tensor]:
        """The decoder features the feedback layers read: the frozen U-Net, without gradient."""
        return self.feedback.first_pass(x_t, self._steps(x_t))

    def forward(self, images: torch.Tensor, indices: Sequence[int] | None = None,
                first: dict[int, torch.Tensor] | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for images in [-1, 1] (see :meth:`noisy` for ``indices`` and ``noise``). ``first`` may
        hold :meth:`first_pass` of the same x_t, computed once when the noise is fixed per image (it does
        not depend on anything DifFeed learns)."""
        x_t = self.noisy(images, indices, noise)
        if first is None:
            first = self.first_pass(x_t)
        additions = self.feedback(first, x_t.shape[-1])
        second = self.model.forward_intermediates(
            x_t, self._steps(x_t), indices=[self.feature_block], stop_early=True, feedback=additions
        )
        return self.head(second[self.feature_block])
