"""diffusers U-Nets (``UNet2DModel``, and ``UNet2DConditionModel`` for Stable Diffusion) as backbones.

The block numbering mirrors ADM's exactly. Encoder ("input") blocks: ``conv_in``; each resnet of a
down block together with its attention; each downsampler. The middle block is the whole ``mid_block``.
Decoder ("output") blocks: each resnet of an up block with its attention, the last one of each up
block including its upsampler. These are exactly the tensors diffusers pushes to and pops from its
skip list, so decoder block b reads the skip of encoder block 2N + 2 - b, as in ADM. An ADM-shaped
UNet2DModel (6 levels, 2 resnets a level) has 37 blocks with the middle at 19; SD-1.5/2.x have 25,
middle 13.

The traversal runs the model's own submodules in the model's own order (tested against its
``forward(...).sample``), stops after the deepest requested block and keeps only skips it will read.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..errors import MissingFileError, UserError
from .backbone import Backbone, BlockInfo
from .optional import optional_import

_DOWN_BLOCKS = {"DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D", "ResnetDownsampleBlock2D"}
_UP_BLOCKS = {"UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D", "ResnetUpsampleBlock2D"}
_MID_BLOCKS = {"UNetMidBlock2D", "UNetMidBlock2DCrossAttn"}

Step = Callable[[torch.Tensor], torch.Tensor]


def _check_supported(unet: nn.Module) -> None:
    kinds = [type(b).__name__ for b in unet.down_blocks] + [type(b).__name__ for b in unet.up_blocks]
    bad = sorted({k for k in kinds if k not in _DOWN_BLOCKS | _UP_BLOCKS})
    if unet.mid_block is None or type(unet.mid_block).__name__ not in _MID_BLOCKS:
        bad.append(f"mid block {type(unet.mid_block).__name__}")
    cfg = unet.config
    for option in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "num_class_embeds"):
        if cfg.get(option) is not None:
            bad.append(f"{option}={cfg.get(option)!r}")
    if bad:
        raise UserError(f"this {type(unet).__name__} uses parts difrep's traversal does not support: "
                        f"{', '.join(bad)} (supported blocks: {', '.join(sorted(_DOWN_BLOCKS | _UP_BLOCKS | _MID_BLOCKS))}; "
                        "no class or added conditioning)")


def _square(size: Any, what: str) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise UserError(f"{what} {tuple(size)} is not square: difrep's data pipeline makes square images")
        size = size[0]
    return int(size)


class DiffusersUNet(Backbone):
    """A diffusers ``UNet2DModel`` with its noise schedule: pixel-space diffusion, like ADM."""

    pixel_factor = 1  # image pixels per model input pixel (8 for SD's latents)

    def __init__(self, unet: nn.Module, diffusion: GaussianDiffusion, image_size: int | None = None,
                 source: str = "") -> None:
        super().__init__()
        _check_supported(unet)
        self.unet, self.diffusion, self.source = unet, diffusion, source
        if image_size is None and unet.config.get("sample_size") is None:
            raise UserError("this U-Net's config has no sample_size: pass image_size")
        self.image_size = int(image_size or _square(unet.config.sample_size, "sample_size") * self.pixel_factor)
        self._cross = type(unet).__name__ == "UNet2DConditionModel"
        self._blocks, self._parts = self._layout()
        self._num_encoder_blocks = sum(1 for b in self._blocks if b.stage == "encoder")
        self._up_factor = 2 ** sum(1 for b in unet.up_blocks if b.upsamplers is not None)
        if (self.image_size // self.pixel_factor) % self._up_factor:
            raise UserError(f"image_size={self.image_size} must be a multiple of {self._up_factor * self.pixel_factor} "
                            "for this U-Net")

    def _layout(self) -> tuple[list[BlockInfo], list[list[str]]]:
        """The block table and, per block, the names of the modules it runs."""
        unet, size = self.unet, self.image_size // self.pixel_factor
        rows: list[tuple[str, int, int, list[str]]] = [("encoder", unet.conv_in.out_channels, 1, ["unet.conv_in"])]
        ds = 1
        for i, block in enumerate(unet.down_blocks):
            attns = getattr(block, "attentions", None)
            for j, res in enumerate(block.resnets):
                names = [f"unet.down_blocks.{i}.resnets.{j}"] + ([f"unet.down_blocks.{i}.attentions.{j}"] if attns else [])
                rows.append(("encoder", res.out_channels, ds, names))
            if block.downsamplers is not None:
                ds *= 2
                rows.append(("encoder", block.downsamplers[0].out_channels, ds, [f"unet.down_blocks.{i}.downsamplers"]))
        rows.append(("middle", unet.mid_block.resnets[-1].out_channels, ds, ["unet.mid_block"]))
        for i, block in enumerate(unet.up_blocks):
            attns = getattr(block, "attentions", None)
            for j, res in enumerate(block.resnets):
                names = [f"unet.up_blocks.{i}.resnets.{j}"] + ([f"unet.up_blocks.{i}.attentions.{j}"] if attns else [])
                if j == len(block.resnets) - 1 and block.upsamplers is not None:
                    ds //= 2
                    names.append(f"unet.up_blocks.{i}.upsamplers")
                rows.append(("decoder", res.out_channels, ds, names))
        info = [BlockInfo(b, names[0], stage, int(ch), r * self.pixel_factor, size // r)
                for b, (stage, ch, r, names) in enumerate(rows, start=1)]
        return info, [names for *_, names in rows]

    def block_modules(self, b: int) -> list[nn.Module]:
        """Every module block b runs (a resnet, its attention, an up/downsampler)."""
        return [self.get_submodule(name) for name in self._parts[self.validate_blocks([b])[0] - 1]]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self.image_size // self.pixel_factor
        return (int(self.unet.config.in_channels), size, size)

    def _context(self, batch: int) -> torch.Tensor | None:
        """The cross-attention context (Stable Diffusion's text embedding); None for UNet2DModel."""
        return None

    def _embed(self, x: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """The time embedding, as the model's forward computes it, and the steps as a [N] tensor."""
        t = self._batch_timesteps(t, x.shape[0], x.device)
        unet = self.unet
        if self._cross:
            emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=t), None)
            if unet.time_embed_act is not None:
                emb = unet.time_embed_act(emb)
        else:
            emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
        return emb, t

    def _steps(self, emb: torch.Tensor, ctx: torch.Tensor | None) -> Iterator[Step]:
        """One function per block, in the model's order; decoder steps take [h, skip] concatenated."""
        unet = self.unet

        def step(res: nn.Module | None, attn: nn.Module | None, cross: bool, samplers: Any) -> Step:
            def run(h: torch.Tensor) -> torch.Tensor:
                if res is not None:
                    h = res(h, emb)
                if attn is not None:
                    h = attn(h, encoder_hidden_states=ctx, return_dict=False)[0] if cross else attn(h)
                for sampler in samplers or ():  # resnet samplers take the time embedding, the others do not
                    h = sampler(h, emb) if type(sampler).__name__ == "ResnetBlock2D" else sampler(h)
                return h
            return run

        yield unet.conv_in
        for block in unet.down_blocks:
            attns = getattr(block, "attentions", None) or [None] * len(block.resnets)
            cross = getattr(block, "has_cross_attention", False)
            for res, attn in zip(block.resnets, attns):
                yield step(res, attn, cross, None)
            if block.downsamplers is not None:
                yield step(None, None, False, block.downsamplers)
        mid = unet.mid_block
        if mid is None:
            return
        if getattr(mid, "has_cross_attention", False):
            yield lambda h: mid(h, emb, encoder_hidden_states=ctx)
        else:
            yield lambda h: mid(h, emb)
        for block in unet.up_blocks:
            attns = getattr(block, "attentions", None) or [None] * len(block.resnets)
            cross = getattr(block, "has_cross_attention", False)
            for j, (res, attn) in enumerate(zip(block.resnets, attns)):
                yield step(res, attn, cross, block.upsamplers if j == len(block.resnets) - 1 else None)

    def _output(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        h = unet.conv_out(h)
        if unet.config.get("time_embedding_type") == "fourier":
            h = h / t.reshape(-1, *([1] * (h.ndim - 1)))
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The model's own output (eps), through difrep's traversal."""
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
        """Activations after the requested blocks b (see :meth:`difrep.models.ADMUNet.forward_intermediates`)."""
        blocks = self.validate_blocks(range(1, self.num_blocks + 1) if indices is None else indices)
        feedback = self._check_feedback(feedback)
        self._check_output_request(stop_early, intermediates_only)
        if x.shape[1:] != self.input_shape:
            raise UserError(f"inputs must be [N, {', '.join(map(str, self.input_shape))}], got {tuple(x.shape)}")
        n_enc = self.num_encoder_blocks
        last = max(blocks, default=0) if stop_early else self.num_blocks
        keep_from = self.mirror_block(last) if last > n_enc + 1 else last + 1
        if self.unet.config.get("center_input_sample"):
            x = 2 * x - 1.0
        emb, t = self._embed(x, t)
        wanted, out = set(blocks), {}
        skips: list[torch.Tensor | None] = []
        h = x
        for b, step in enumerate(self._steps(emb, self._context(x.shape[0])), start=1):
            if b > last:
                break
            if b <= n_enc:
                h = step(h)
                if b in feedback:
                    h = h + feedback[b].to(h.dtype)
                skips.append(h if b >= keep_from else None)
            elif b == n_enc + 1:
                h = step(h)
            else:
                h = step(torch.cat([h, skips.pop()], dim=1))  # type: ignore[list-item]
            if b in wanted:
                out[b] = h
        ordered = {b: out[b] for b in blocks}
        if intermediates_only:
            return ordered
        return self._output(h, t), ordered

    def prune_intermediate_layers(self, indices: list[int | str]) -> int:
        """Drop every block after the deepest of ``indices`` and the output layers; numbers keep their meaning."""
        last = max(self.validate_blocks(indices))
        keep = {name for names in self._parts[:last] for name in names}
        unet = self.unet
        for kind, samplers in (("down_blocks", "downsamplers"), ("up_blocks", "upsamplers")):
            kept = []
            for i, block in enumerate(getattr(unet, kind)):
                prefix = f"unet.{kind}.{i}"
                used = sum(f"{prefix}.resnets.{j}" in keep for j in range(len(block.resnets)))
                if not used:
                    break
                block.resnets = block.resnets[:used]
                if getattr(block, "attentions", None) is not None:
                    block.attentions = block.attentions[:used]
                if f"{prefix}.{samplers}" not in keep:
                    setattr(block, samplers, None)
                kept.append(block)
            setattr(unet, kind, nn.ModuleList(kept))
        if "unet.mid_block" not in keep:
            unet.mid_block = None
        unet.conv_norm_out = unet.conv_act = unet.conv_out = None
        self._blocks = self._blocks[:last]
        self._pruned_after = last
        return last

    def random_copy(self) -> DiffusersUNet:
        unet = type(self.unet).from_config(self.unet.config).to(self.unet.device)
        return DiffusersUNet(unet, self.diffusion, self.image_size, self.source)

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "source": self.source, "image_size": self.image_size,
                "unet": dict(self.unet.config), "schedule": self.diffusion.schedule}


def _diffusion_from_scheduler(folder: Path | None) -> GaussianDiffusion:
    """The noise schedule from a diffusers scheduler folder (its betas), or DDPM's default without one."""
    diffusers = optional_import("diffusers", "diffusers backbones")
    if folder is None:
        warnings.warn("no scheduler/ folder beside the model: using DDPM's default schedule (linear, 1000 steps)",
                      UserWarning, stacklevel=3)
        scheduler = diffusers.DDPMScheduler()
    else:
        scheduler = diffusers.DDPMScheduler.from_pretrained(str(folder), local_files_only=True)
    return GaussianDiffusion(schedule=str(scheduler.config.beta_schedule), betas=scheduler.betas)


def _load(cls: Any, folder: Path, what: str) -> nn.Module:
    try:
        options = {"low_cpu_mem_usage": False} if cls.__module__.startswith("diffusers") else {}
        return cls.from_pretrained(str(folder), local_files_only=True, **options)
    except (OSError, ValueError) as err:
        raise UserError(f"{folder}: cannot load the {what} ({str(err).splitlines()[0]})") from err


READ_CLASSES = ("UNet2DModel", "DiTTransformer2DModel")


def model_class_name(folder: Path) -> str:
    """The ``_class_name`` that ``save_pretrained`` wrote to ``folder/config.json``."""
    config = folder / "config.json"
    if not config.is_file():
        raise MissingFileError(f"{folder} has no config.json: pass a folder written by save_pretrained")
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{config}: not a diffusers config (a JSON object with _class_name): {err}") from err
    if not isinstance(name, str):
        raise UserError(f"{config} names no _class_name: pass a folder written by a diffusers model's save_pretrained")
    return name


def model_folder(path: str | Path) -> tuple[Path, Path, str]:
    """(the folder given, the model's own folder in it, the model's class): a pipeline folder holds its model
    in ``unet/`` or ``transformer/``, a model folder holds it at the top. A class difrep does not read is
    refused, naming it: diffusers would build a random model of another class from its config."""
    root = Path(path)
    if not root.is_dir():
        raise MissingFileError(f"diffusers model folder {root}: no such folder")
    model_dir = next((root / d for d in ("unet", "transformer") if (root / d / "config.json").is_file()), root)
    name = model_class_name(model_dir)
    if name == "UNet2DConditionModel":
        raise UserError(f"{model_dir} holds a UNet2DConditionModel (text-conditioned): use sd:{root}")
    if name not in READ_CLASSES:
        raise UserError(f"{model_dir / 'config.json'} describes a {name}; diffusers:FOLDER reads "
                        f"{', '.join(READ_CLASSES)} (and sd:FOLDER Stable Diffusion's UNet2DConditionModel)")
    return root, model_dir, name


def beside(root: Path, model_dir: Path, part: str) -> Path | None:
    """A pipeline part (``scheduler``, ``vae``) next to the model: in the folder given, or beside the model's folder."""
    return next((d for d in (root / part, model_dir.parent / part) if d.is_dir()), None)


def load_diffusers_unet(path: str | Path, image_size: int | None = None) -> DiffusersUNet:
    """A ``UNet2DModel`` from a local folder saved with ``save_pretrained``: either the U-Net's own folder
    or a pipeline folder with ``unet/`` (and ``scheduler/``, whose betas give the noise schedule)."""
    diffusers = optional_import("diffusers", "diffusers backbones")
    root, model_dir, name = model_folder(path)
    if name != "UNet2DModel":
        raise UserError(f"{model_dir} holds a {name}, not a UNet2DModel: build it with create_model('diffusers:{root}')")
    unet = _load(diffusers.UNet2DModel, model_dir, "UNet2DModel")
    scheduler = beside(root, model_dir, "scheduler")
    return DiffusersUNet(unet, _diffusion_from_scheduler(scheduler), image_size, source=str(root.resolve()))
