"""Stable Diffusion as a backbone: VAE latents, the text-conditioned U-Net, a null or learnable prompt.

Images are encoded once per call to latents (the posterior's mode times the VAE's scaling factor);
noise is added in latent space with the scheduler's betas; the U-Net runs with a fixed text context:
the embedding of the empty prompt, computed once when the model is loaded (the text encoder is then
dropped), or a learnable embedding initialised from it and trained together with a head (the paper's
Table 10). The VAE's decoder is dropped too: features never decode.

Block numbering is the ADM-mirroring one of :mod:`difrep.models.diffusers_unet` (SD-1.5/2.x: 25
blocks, middle 13). ``block_aliases`` names blocks as other tools and the paper do:

- ``dift:i`` (DIFT's ``up_ft_index`` i): the output of ``up_blocks[i]``, upsampler included, i.e. the
  last decoder block of up block i: 16, 19, 22, 25 for SD-1.5.
- ``paper:15`` and ``paper:18`` (Table 10): the paper calls b = 15 the mid-block and does not spell out
  its numbering; difrep reads it as the paper's numbers being difrep's plus 2, so ``paper:15`` is the
  middle block (13) and ``paper:18`` is block 16 (= ``dift:0``). This is an interpretation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..errors import MissingFileError, UserError
from .diffusers_unet import DiffusersUNet, _diffusion_from_scheduler, _load
from .optional import optional_import

PAPER_MIDDLE = 15  # the paper's number for SD's middle block (Table 10)


class StableDiffusion(DiffusersUNet):
    """SD's U-Net on VAE latents with a fixed (null) or learnable text context."""

    def __init__(self, unet: nn.Module, vae: nn.Module, null_context: torch.Tensor, diffusion: GaussianDiffusion,
                 learnable_text: bool = False, image_size: int | None = None, source: str = "") -> None:
        self.pixel_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        super().__init__(unet, diffusion, image_size, source)
        vae.decoder = vae.post_quant_conv = None
        self.vae = vae.requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.learnable_text = learnable_text
        ends, b = [], self.num_encoder_blocks + 1
        for block in unet.up_blocks:
            b += len(block.resnets)
            ends.append(b)
        self._up_block_ends = ends
        if null_context.ndim != 3 or null_context.shape[0] != 1:
            raise UserError(f"the text context must be [1, tokens, dim], got {tuple(null_context.shape)}")
        if learnable_text:
            self.text_embedding = nn.Parameter(null_context.detach().clone())
        else:
            self.register_buffer("text_embedding", null_context.detach().clone())

    @property
    def block_aliases(self) -> dict[str, int]:
        aliases = {f"dift:{i}": b for i, b in enumerate(self._up_block_ends)}
        middle = self.num_encoder_blocks + 1
        for paper in (PAPER_MIDDLE, PAPER_MIDDLE + 3):
            aliases[f"paper:{paper}"] = paper - PAPER_MIDDLE + middle
        return aliases

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return vae_latents(self.vae, self.scaling_factor, images)

    def _context(self, batch: int) -> torch.Tensor:
        return self.text_embedding.expand(batch, -1, -1)

    def trainable_with_head(self) -> list[nn.Parameter]:
        return [self.text_embedding] if self.learnable_text else []

    def random_copy(self) -> StableDiffusion:
        """A random-init U-Net on the trained VAE's latents, with the trained null text."""
        unet = type(self.unet).from_config(self.unet.config).to(self.unet.device)
        return StableDiffusion(unet, self.vae, self.text_embedding.detach(), self.diffusion, self.learnable_text,
                               self.image_size, self.source)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "learnable_text": self.learnable_text, "vae_scaling_factor": self.scaling_factor}


def vae_latents(vae: nn.Module, scaling_factor: float, images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images to scaled VAE latents (the posterior's mode), without gradient."""
    with torch.no_grad():
        weight = next(vae.parameters())
        latents = vae.encode(images.to(weight.dtype)).latent_dist.mode()
    return (latents * scaling_factor).to(images.dtype)


def null_text_embedding(tokenizer: Any, text_encoder: nn.Module) -> torch.Tensor:
    """The text encoder's output for the empty prompt, padded to the tokenizer's length, as SD pipelines do."""
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0].float()


def load_stable_diffusion(path: str | Path, learnable_text: bool = False, image_size: int | None = None) -> StableDiffusion:
    """Stable Diffusion from a local diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``)."""
    diffusers = optional_import("diffusers", "Stable Diffusion backbones")
    transformers = optional_import("transformers", "Stable Diffusion backbones")
    root = Path(path)
    if not root.is_dir():
        raise MissingFileError(f"Stable Diffusion folder {root}: no such folder")
    missing = [d for d in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (root / d).is_dir()]
    if missing:
        raise MissingFileError(f"Stable Diffusion folder {root} lacks {', '.join(d + '/' for d in missing)}: pass a "
                               "folder written by a diffusers pipeline's save_pretrained")
    unet = _load(diffusers.UNet2DConditionModel, root / "unet", "UNet2DConditionModel")
    vae = _load(diffusers.AutoencoderKL, root / "vae", "AutoencoderKL")
    text_encoder = _load(transformers.CLIPTextModel, root / "text_encoder", "CLIP text encoder")
    tokenizer = _load(transformers.CLIPTokenizer, root / "tokenizer", "CLIP tokenizer")
    context = null_text_embedding(tokenizer, text_encoder.eval())
    return StableDiffusion(unet, vae, context, _diffusion_from_scheduler(root / "scheduler"), learnable_text,
                           image_size, source=str(root.resolve()))
