"""``create_model``: one entry point for every backbone, by preset name plus flag overrides."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingFileError, UserError
from .adm import ADMConfig, ADMEncoder, ADMEncoderConfig, ADMUNet
from .backbone import Backbone
from .checkpoint import load_checkpoint
from .diffusers_unet import load_diffusers_unet, model_folder
from .dit import load_dit
from .optional import optional_import
from .stable_diffusion import load_stable_diffusion
from .timm_backbone import TimmBackbone

_ADM_256 = dict(
    image_size=256,
    num_channels=256,
    num_res_blocks=2,
    attention_resolutions="32,16,8",
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
    diffusion_steps=1000,
    noise_schedule="linear",
)
_CLASSIFIER = dict(
    num_channels=128,
    num_res_blocks=2,
    attention_resolutions="32,16,8",
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    pool="attention",
    out_channels=1000,
)


_FMNIST_28 = dict(
    image_size=28,
    in_channels=1,  # grey data: a one-channel model cannot give its samples colour casts
    num_channels=32,
    channel_mult="1,2,2",
    num_res_blocks=2,
    attention_resolutions="7",
    num_head_channels=32,
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
    diffusion_steps=1000,
    noise_schedule="linear",
)


@dataclass(frozen=True)
class Preset:
    config: ADMConfig
    checkpoint: str
    description: str
    shipped: str = ""  # weights file inside the difrep package (models/weights/), if difrep ships them

    @property
    def builder(self) -> type:
        return ADMEncoder if isinstance(self.config, ADMEncoderConfig) else ADMUNet


PRESETS: dict[str, Preset] = {
    "adm": Preset(ADMConfig(), "", "guided-diffusion's default flags; configure it with overrides"),
    "adm-256-uncond": Preset(
        ADMConfig(**_ADM_256), "256x256_diffusion_uncond.pt", "the paper's backbone: ImageNet 256, unconditional"
    ),
    "adm-256-cond": Preset(
        ADMConfig(**_ADM_256, class_cond=True), "256x256_diffusion.pt", "ImageNet 256, class-conditional"
    ),
    "adm-fmnist-28": Preset(
        ADMConfig(**_FMNIST_28), "adm_fmnist_28.safetensors",
        "difrep's own: Fashion-MNIST 28, grey, unconditional, 1.9M parameters (pretrained=True loads the shipped weights)",
        shipped="adm_fmnist_28.safetensors",
    ),
    "adm-64-cond": Preset(
        ADMConfig(
            image_size=64, num_channels=192, num_res_blocks=3, attention_resolutions="32,16,8",
            num_head_channels=64, resblock_updown=True, use_new_attention_order=True,
            use_scale_shift_norm=True, learn_sigma=True, class_cond=True, dropout=0.1,
            noise_schedule="cosine",
        ),
        "64x64_diffusion.pt",
        "ImageNet 64, class-conditional (cosine schedule, new attention order)",
    ),
    "adm-128-cond": Preset(
        ADMConfig(
            image_size=128, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8",
            num_heads=4, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True,
            class_cond=True,
        ),
        "128x128_diffusion.pt",
        "ImageNet 128, class-conditional",
    ),
    "adm-512-cond": Preset(
        ADMConfig(**{**_ADM_256, "image_size": 512}, class_cond=True),
        "512x512_diffusion.pt",
        "ImageNet 512, class-conditional",
    ),
    "adm-64-classifier": Preset(
        ADMEncoderConfig(**{**_CLASSIFIER, "num_res_blocks": 4}, image_size=64, noise_schedule="cosine"),
        "64x64_classifier.pt",
        "noisy ImageNet classifier (the paper's 'U-Net Encoder'), 64x64",
    ),
    **{
        f"adm-{size}-classifier": Preset(
            ADMEncoderConfig(**_CLASSIFIER, image_size=size),
            f"{size}x{size}_classifier.pt",
            f"noisy ImageNet classifier (the paper's 'U-Net Encoder'), {size}x{size}",
        )
        for size in (128, 256, 512)
    },
}


def list_models() -> list[str]:
    return sorted(PRESETS)


def _unknown(name: str) -> UserError:
    return UserError(f"unknown model {name!r}: available models are {', '.join(list_models())}, or a name with a "
                     f"prefix: {'; '.join(BACKBONE_FAMILIES.values())}")


def _config_for(name: str, overrides: dict[str, Any]) -> ADMConfig:
    if name not in PRESETS:
        raise _unknown(name)
    base = PRESETS[name].config
    known = {f.name for f in fields(base)}
    if "use_fp16" in overrides:
        raise UserError(
            "use_fp16 is a run-time choice in difrep, not a model flag: run under torch.autocast "
            "or pass dtype=torch.float16 to FeatureExtractor"
        )
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown flag(s) {unknown} for {name!r}: valid flags are {sorted(known)}")
    return replace(base, **overrides)


def shipped_weights(name: str) -> Path:
    """The path of the weights difrep ships for preset ``name``."""
    if name not in PRESETS:
        raise UserError(f"unknown model {name!r}: available models are {', '.join(list_models())}")
    preset = PRESETS[name]
    if not preset.shipped:
        shipped = [k for k, v in PRESETS.items() if v.shipped]
        raise UserError(f"difrep ships no weights for {name!r} (it does for {', '.join(shipped)}): pass "
                         f"checkpoint={preset.checkpoint or 'FILE'!r} instead")
    path = Path(str(resources.files("difrep.models") / "weights" / preset.shipped))
    if not path.is_file():
        raise MissingFileError(f"the shipped weights of {name!r} are missing from the installation: {path}")
    return path


BACKBONE_FAMILIES = {
    "timm:": "timm:NAME: any timm model (e.g. timm:resnet50, timm:vit_base_patch16_224); checkpoint=FILE",
    "diffusers:": "diffusers:FOLDER: a diffusers UNet2DModel or DiTTransformer2DModel saved with save_pretrained "
                  "(a pipeline folder: with its scheduler/, and vae/ for DiT)",
    "sd:": "sd:FOLDER: Stable Diffusion from a local diffusers folder (unet, vae, text_encoder, tokenizer, scheduler)",
}


def _create_other(name: str, checkpoint: str | Path | None, pretrained: bool, options: dict[str, Any]) -> Backbone:
    """timm, diffusers and Stable Diffusion backbones, by the prefix of their name (their packages are
    imported only here, when such a backbone is built)."""
    prefix, _, target = name.partition(":")
    if pretrained:
        raise UserError(f"pretrained=True loads weights difrep ships; for {name!r} pass checkpoint=FILE or a folder")
    if prefix == "timm":
        return TimmBackbone(target, checkpoint, **options).eval()
    if checkpoint is not None:
        raise UserError(f"{name!r} takes its weights from its folder: drop checkpoint={str(checkpoint)!r}")
    if prefix == "diffusers":
        return _load_diffusers(target, options).eval()
    return load_stable_diffusion(target, **options).eval()


_DIFFUSERS_LOADERS: dict[str, tuple[Callable[..., Backbone], tuple[str, ...]]] = {
    "UNet2DModel": (load_diffusers_unet, ("image_size",)),
    "DiTTransformer2DModel": (load_dit, ("image_size", "class_label", "learnable_class")),
}


def _load_diffusers(folder: str, options: dict[str, Any]) -> Backbone:
    """The backbone for the class that the folder's config.json names, with that class's options checked."""
    optional_import("diffusers", "diffusers backbones")
    _, _, name = model_folder(folder)
    loader, accepted = _DIFFUSERS_LOADERS[name]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"diffusers:{folder} holds a {name}: it takes the option(s) {', '.join(accepted)}, "
                        f"not {', '.join(unknown)}")
    return loader(folder, **options)


def create_model(
    name: str, checkpoint: str | Path | None = None, pretrained: bool = False, **overrides: Any
) -> Backbone:
    """Build a backbone from a preset and guided-diffusion flag overrides, optionally with weights.

    Other families are named by a prefix (:data:`BACKBONE_FAMILIES`): ``timm:resnet50`` with
    ``checkpoint=FILE`` and options ``image_size``, ``mean``, ``std`` or timm's own; ``diffusers:FOLDER``
    (a UNet2DModel, or a DiT with options ``class_label`` and ``learnable_class``) and ``sd:FOLDER`` (option
    ``learnable_text``), both with ``image_size``, weights from the folder.

    ``pretrained`` loads the weights difrep ships for the preset (``adm-fmnist-28``); a preset that has
    shipped weights warns when it is built without them, since random features are rarely what was
    meant. The model is returned in eval mode. With weights the random initialisation is skipped: the
    model is built on the meta device and adopts the checkpoint's tensors (as float32).
    """
    if name.partition(":")[0] + ":" in BACKBONE_FAMILIES:
        return _create_other(name, checkpoint, pretrained, overrides)
    if pretrained:
        if checkpoint is not None:
            raise UserError("pass either checkpoint or pretrained=True, not both")
        checkpoint = shipped_weights(name)
    config = _config_for(name, overrides)
    builder = PRESETS[name].builder
    if checkpoint is None:
        if name in PRESETS and PRESETS[name].shipped:
            warnings.warn(f"{name!r} has weights shipped with difrep but was built with random weights: pass "
                          "pretrained=True (command line: --pretrained; configs: model.pretrained=true) to use them",
                          UserWarning, stacklevel=2)
        return builder(config).eval()
    with torch.device("meta"):
        model = builder(config)
    load_checkpoint(model, checkpoint, assign=True)
    return model.eval()


@dataclass
class ModelConfig:
    """The backbone: a preset, its weights (a checkpoint file, or ``pretrained`` for the weights difrep
    ships) and guided-diffusion flag overrides."""

    name: str = "adm-256-uncond"
    checkpoint: str | None = None
    pretrained: bool = False
    flags: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Backbone:
        """The model this section describes (``flags`` are a family's options for timm:/diffusers:/sd: names)."""
        return create_model(self.name, checkpoint=self.checkpoint, pretrained=self.pretrained, **self.flags)
