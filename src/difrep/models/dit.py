"""DiT (diffusers' ``DiTTransformer2DModel``) as a backbone: transformer blocks on VAE latents at a noise step t.

Blocks: b = 1..depth is the output of ``transformer_blocks[b-1]``; block 0, named ``embed``, is the patch
embedding (with its position embedding) that the first block reads; block depth + 1, named ``final``, is
the final layer (adaLN-modulated norm and linear projection) before the model unpatchifies it. Every
block is a feature map [N, D, H/p, W/p] of the tokens, token row * (W/p) + column at [:, :, row, column]
(patch size p, H x W the latent's size); its reduction is p times the VAE's factor in image pixels.

Conditioning. DiT is class-conditional: its label table has a row per class plus a learned null class
(index ``num_classes``), which DiT trained on 10% of its images so that classifier-free guidance has an
unconditional model. The paper's "text-free" features are those of a diffusion model given no prompt
(SD's empty prompt); for DiT that is the null class, difrep's default: no label is given. ``class_label``
fixes one real label for every image instead (features of the model told every image is that class), and
``learnable_class`` learns the conditioning vector together with a head, initialised from the chosen row,
as SD's ``learnable_text`` learns its context. diffusers keeps a copy of the label table in every block
(converted DiT checkpoints copy DiT's one table into each): when the chosen rows are equal, as there, all
blocks share one vector; otherwise each block keeps its own.

The traversal calls diffusers' own modules with the arguments its forward passes them (tested against
``forward(...).sample`` and hooks on ``transformer_blocks``), and stops after the deepest requested block.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..errors import UserError
from .backbone import Backbone, BlockInfo
from .diffusers_unet import _diffusion_from_scheduler, _load, _square, beside, model_folder
from .optional import optional_import
from .stable_diffusion import vae_latents


class ClassEmbedding(nn.Module):
    """Stands in for diffusers' ``LabelEmbedding``: one class vector for every image, fixed or learned
    (so label dropout, which would swap in the null class at random while training, never happens)."""

    def __init__(self, vector: torch.Tensor, learnable: bool) -> None:
        super().__init__()
        vector = vector.detach().clone().reshape(1, -1)
        if learnable:
            self.vector = nn.Parameter(vector)
        else:
            self.register_buffer("vector", vector)

    def forward(self, labels: torch.Tensor, force_drop_ids: Any = None) -> torch.Tensor:
        return self.vector.expand(labels.shape[0], -1)


class DiT(Backbone):
    """A diffusers ``DiTTransformer2DModel`` with its noise schedule, on VAE latents (or pixels without a VAE)."""

    def __init__(self, transformer: nn.Module, diffusion: GaussianDiffusion, vae: nn.Module | None = None,
                 class_label: int | None = None, learnable_class: bool = False, image_size: int | None = None,
                 source: str = "") -> None:
        super().__init__()
        if type(transformer).__name__ != "DiTTransformer2DModel":
            raise UserError(f"DiT reads a DiTTransformer2DModel, got a {type(transformer).__name__}")
        cfg = transformer.config
        self.transformer, self.diffusion, self.source = transformer, diffusion, source
        self.patch_size, self.depth = int(cfg.patch_size), len(transformer.transformer_blocks)
        self.num_classes = int(cfg.num_embeds_ada_norm)
        self.in_channels = int(cfg.in_channels)
        if vae is not None:
            if int(vae.config.latent_channels) != self.in_channels:
                raise UserError(f"the VAE makes {vae.config.latent_channels}-channel latents but the DiT reads "
                                f"{self.in_channels} channels: the vae/ folder belongs to another model")
            vae.decoder = vae.post_quant_conv = None
            self.vae = vae.requires_grad_(False)
            self.scaling_factor = float(vae.config.scaling_factor)
            self.pixel_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        elif self.in_channels not in (1, 3):
            raise UserError(f"this DiT reads {self.in_channels}-channel latents: it needs its VAE (a pipeline folder "
                            "with transformer/, vae/ and scheduler/)")
        else:
            self.vae, self.scaling_factor, self.pixel_factor = None, 1.0, 1
        self.reduction = self.patch_size * self.pixel_factor
        self.image_size = int(image_size or _square(cfg.sample_size, "sample_size") * self.pixel_factor)
        if self.image_size % self.reduction:
            raise UserError(f"image_size={self.image_size} must be a multiple of {self.reduction} for this DiT "
                            f"(patch size {self.patch_size} on {self.pixel_factor}x smaller latents)")
        if class_label is not None and not 0 <= int(class_label) < self.num_classes:
            raise UserError(f"class_label={class_label}: this DiT has classes 0..{self.num_classes - 1} (leave "
                            f"class_label unset for the null class {self.num_classes}, the text-free default)")
        self.class_label = self.num_classes if class_label is None else int(class_label)
        self.learnable_class = learnable_class
        self._condition_on(self.class_label, learnable_class)
        side, width = self.image_size // self.reduction, int(transformer.inner_dim)
        final = self.patch_size ** 2 * int(transformer.out_channels)
        self._blocks = (
            [BlockInfo(0, "transformer.pos_embed", "embed", width, self.reduction, side)]
            + [BlockInfo(b, f"transformer.transformer_blocks.{b - 1}", "transformer", width, self.reduction, side)
               for b in range(1, self.depth + 1)]
            + [BlockInfo(self.depth + 1, "transformer.proj_out_2", "final", final, self.reduction, side)]
        )

    def _condition_on(self, label: int, learnable: bool) -> None:
        """Put a :class:`ClassEmbedding` of ``label``'s row in every block (one shared where the rows are equal)."""
        embedders = self._embedders()
        rows = [e.class_embedder.embedding_table.weight[label] for e in embedders]
        if not rows[0].is_meta and all(torch.equal(rows[0], r) for r in rows[1:]):  # meta: a shape-only model
            shared = ClassEmbedding(rows[0], learnable)
            replacements = [shared] * len(rows)
        else:
            replacements = [ClassEmbedding(r, learnable) for r in rows]
        for embedder, replacement in zip(embedders, replacements):
            embedder.class_embedder = replacement

    @property
    def block_aliases(self) -> dict[str, int]:
        return {"embed": 0, "final": self.depth + 1}

    @property
    def middle_block_index(self) -> int:
        return (self.depth + 1) // 2

    @property
    def size_multiple(self) -> int:
        """A patch of latent pixels: the patch size times the VAE's factor."""
        return self.reduction

    @property
    def input_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.pixel_factor
        return (self.in_channels, side, side)

    def block_modules(self, b: int | str) -> list[nn.Module]:
        b = self.validate_blocks([b])[0]
        if b == self.depth + 1:
            t = self.transformer
            return [t.norm_out, t.proj_out_1, t.proj_out_2]
        return super().block_modules(b)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] RGB images to scaled VAE latents; without a VAE the pixels (their channel mean for one channel)."""
        if self.vae is not None:
            return vae_latents(self.vae, self.scaling_factor, images)
        return images.mean(dim=1, keepdim=True) if self.in_channels == 1 else images

    def trainable_with_head(self) -> list[nn.Parameter]:
        if not self.learnable_class:
            return []
        unique = {id(e.class_embedder): e.class_embedder.vector for e in self._embedders()}
        return list(unique.values())

    def _embedders(self) -> list[nn.Module]:
        return [block.norm1.emb for block in self.transformer.transformer_blocks]

    def _final_layer(self, h: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """DiT's final layer on the tokens, as diffusers' forward runs it (conditioned through block 1's embedder)."""
        tr = self.transformer
        conditioning = tr.transformer_blocks[0].norm1.emb(t, labels, hidden_dtype=h.dtype)
        shift, scale = tr.proj_out_1(nn.functional.silu(conditioning)).chunk(2, dim=1)
        return tr.proj_out_2(tr.norm_out(h) * (1 + scale[:, None]) + shift[:, None])

    def _unpatchify(self, tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        p, c = self.patch_size, int(self.transformer.out_channels)
        x = tokens.reshape(-1, rows, cols, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(-1, c, rows * p, cols * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The model's own output (eps, and the variance channels where it learns them), through difrep's traversal."""
        return self.forward_intermediates(x, t, indices=[], intermediates_only=False)[0]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int,
        indices: list[int | str] | None = None,
        stop_early: bool = False,
        intermediates_only: bool = True,
        feedback: Mapping[int, torch.Tensor] | None = None,
    ) -> dict[int, torch.Tensor] | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Token maps [N, D, H/p, W/p] after the requested blocks b (0 = ``embed`` .. depth + 1 = ``final``),
        for latents x [N, C, H, W] (any H, W that are multiples of p: the position embedding follows the size)
        at noise steps t. ``stop_early`` runs nothing after the deepest block asked for."""
        blocks = self.validate_blocks([i.index for i in self._blocks] if indices is None else indices)
        if feedback:
            raise UserError("DiT has no encoder-decoder skips to feed back into (DifFeed is for U-Nets)")
        self._check_output_request(stop_early, intermediates_only)
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] % p or x.shape[-2] % p:
            raise UserError(f"inputs must be [N, {self.in_channels}, H, W] with H and W multiples of {p} "
                            f"(this DiT's {self.input_shape[1]}x{self.input_shape[2]}), got {tuple(x.shape)}")
        rows, cols = x.shape[-2] // p, x.shape[-1] // p
        t = self._batch_timesteps(t, x.shape[0], x.device)
        labels = torch.full((x.shape[0],), self.class_label, dtype=torch.long, device=x.device)
        last = max(blocks, default=0) if stop_early else self.num_blocks
        wanted, out = set(blocks), {}

        def keep(b: int, tokens: torch.Tensor) -> None:
            if b in wanted:
                out[b] = tokens.transpose(1, 2).reshape(x.shape[0], -1, rows, cols)

        h = self.transformer.pos_embed(x)
        keep(0, h)
        for b, block in enumerate(self.transformer.transformer_blocks, start=1):
            if b > last:
                break
            h = block(h, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None, timestep=t,
                      cross_attention_kwargs=None, class_labels=labels)
            keep(b, h)
        if last > self.depth:
            h = self._final_layer(h, t, labels)
            keep(self.depth + 1, h)
        ordered = {b: out[b] for b in blocks}
        if intermediates_only:
            return ordered
        return self._unpatchify(h, rows, cols), ordered

    def prune_intermediate_layers(self, indices: list[int | str]) -> int:
        """Drop every block after the deepest of ``indices`` (and the final layer below it); numbers keep their meaning."""
        last = max(self.validate_blocks(indices))
        tr = self.transformer
        if last <= self.depth:
            tr.norm_out = tr.proj_out_1 = tr.proj_out_2 = None
            tr.transformer_blocks = nn.ModuleList(list(tr.transformer_blocks)[:last])
        self._blocks = [info for info in self._blocks if info.index <= last]
        self._pruned_after = last
        return last

    def random_copy(self) -> DiT:
        """A random-init transformer (its own null row) on the trained VAE's latents."""
        transformer = type(self.transformer).from_config(self.transformer.config).to(self.transformer.device)
        label = None if self.class_label == self.num_classes else self.class_label
        return DiT(transformer, self.diffusion, self.vae, label, self.learnable_class, self.image_size, self.source)

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "source": self.source, "image_size": self.image_size,
                "transformer": dict(self.transformer.config), "schedule": self.diffusion.schedule,
                "class_label": self.class_label, "learnable_class": self.learnable_class,
                "vae_scaling_factor": self.scaling_factor if self.vae is not None else None}


def load_dit(path: str | Path, image_size: int | None = None, class_label: int | None = None,
             learnable_class: bool = False) -> DiT:
    """A DiT from a local folder: a pipeline saved by ``DiTPipeline.save_pretrained`` (``model_index.json``,
    ``transformer/``, ``vae/``, ``scheduler/``), or a ``DiTTransformer2DModel``'s own folder (with ``vae/`` and
    ``scheduler/`` beside it; a DiT on 1- or 3-channel pixels needs no VAE)."""
    diffusers = optional_import("diffusers", "DiT backbones")
    root, model_dir, name = model_folder(path)
    if name != "DiTTransformer2DModel":
        raise UserError(f"{model_dir} holds a {name}, not a DiTTransformer2DModel: build it with "
                        f"create_model('diffusers:{root}')")
    transformer = _load(diffusers.DiTTransformer2DModel, model_dir, "DiTTransformer2DModel")
    vae_dir = beside(root, model_dir, "vae")
    if vae_dir is None and int(transformer.config.in_channels) not in (1, 3):
        raise UserError(f"{model_dir} holds a DiT on {transformer.config.in_channels}-channel latents but no vae/ "
                        f"is beside it: pass the pipeline folder (model_index.json, transformer/, vae/, scheduler/)")
    vae = _load(diffusers.AutoencoderKL, vae_dir, "AutoencoderKL").eval() if vae_dir is not None else None
    diffusion = _diffusion_from_scheduler(beside(root, model_dir, "scheduler"))
    return DiT(transformer.eval(), diffusion, vae, class_label, learnable_class, image_size,
               source=str(root.resolve()))


DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}  # depth, width, heads


def random_dit(size: str = "XL", patch_size: int = 2, sample_size: int = 32, in_channels: int = 4,
               num_classes: int = 1000, depth: int | None = None, width: int | None = None,
               heads: int | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised ``DiTTransformer2DModel`` of one of DiT's sizes (S, B, L, XL: Peebles & Xie,
    Table 1), learning its variance as DiT does; ``depth``, ``width`` and ``heads`` override the size's."""
    diffusers = optional_import("diffusers", "DiT backbones")
    if size not in DIT_SIZES:
        raise UserError(f"DiT size {size!r}: use one of {', '.join(DIT_SIZES)}")
    d, w, h = DIT_SIZES[size]
    depth, width, heads = depth or d, width or w, heads or h
    if width % heads:
        raise UserError(f"width {width} must be a multiple of heads {heads}")
    if sample_size % patch_size:
        raise UserError(f"sample size {sample_size} must be a multiple of the patch size {patch_size}")
    torch.manual_seed(seed)
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=width // heads, in_channels=in_channels,
        out_channels=2 * in_channels, num_layers=depth, sample_size=sample_size, patch_size=patch_size,
        num_embeds_ada_norm=num_classes).eval()


def save_random_dit(folder: str | Path, transformer: nn.Module, vae_from: str | Path | None = None) -> Path:
    """Write a DiT folder that ``diffusers:FOLDER`` reads: ``transformer/``, DiT's scheduler (linear betas
    1e-4..0.02 over 1000 steps) in ``scheduler/`` and, for a latent DiT, the VAE of ``vae_from`` (a VAE folder or
    a pipeline holding ``vae/``) in ``vae/`` with ``model_index.json``, as ``DiTPipeline.save_pretrained`` does."""
    diffusers = optional_import("diffusers", "DiT backbones")
    out = Path(folder)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: pass a new folder")
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                        beta_end=0.02)
    if vae_from is None:
        if int(transformer.config.in_channels) not in (1, 3):
            raise UserError(f"a DiT on {transformer.config.in_channels}-channel latents needs a VAE: pass a VAE "
                            "folder (or a pipeline with vae/), or in_channels 1 or 3 for a DiT on pixels")
        transformer.save_pretrained(out / "transformer")
        scheduler.save_pretrained(out / "scheduler")
        return out
    source = Path(vae_from)
    source = source / "vae" if (source / "vae" / "config.json").is_file() else source
    vae = _load(diffusers.AutoencoderKL, source, "AutoencoderKL")
    if int(vae.config.latent_channels) != int(transformer.config.in_channels):
        raise UserError(f"{source} makes {vae.config.latent_channels}-channel latents, the DiT reads "
                        f"{transformer.config.in_channels}")
    diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(out)
    return out
