"""``difrep info MODEL``: the block table (b, stage, module, channels, resolution) of any backbone."""

from __future__ import annotations

import argparse

import torch

from ..models import PRESETS, create_model
from ..models.registry import BACKBONE_FAMILIES
from .overrides import parse_model_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print a model's feature blocks",
        description="Print the paper-numbered feature blocks of a model. Extra --flag value pairs "
        "override guided-diffusion model flags, e.g. difrep info adm --image_size 64 --num_channels 64, or "
        "set a family's options, e.g. difrep info timm:vit_base_patch16_224 --image_size 224.",
    )
    p.add_argument("model", nargs="?", help="ADM preset, timm:NAME, diffusers:FOLDER or sd:FOLDER; omit to list "
                   "the presets")
    p.add_argument("--checkpoint", help="also load this checkpoint strictly, to check that it fits")
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.model is None:
        print(f"{'model':20} {'checkpoint':28} description")
        for name, preset in sorted(PRESETS.items()):
            print(f"{name:20} {preset.checkpoint or '-':28} {preset.description}")
        print("\nother backbones:")
        for family in BACKBONE_FAMILIES.values():
            print(f"  {family}")
        return 0
    flags = parse_model_flags(args.model, extra)
    if args.checkpoint or args.model not in PRESETS:
        model = create_model(args.model, checkpoint=args.checkpoint, **flags)
    else:
        with torch.device("meta"):
            model = create_model(args.model, **flags)
    params = sum(p.numel() for p in model.parameters())
    steps = (f"{model.diffusion.num_timesteps} {model.diffusion.schedule} noise steps" if model.takes_timestep
             else "no noise step (t is ignored)")
    print(f"{args.model}: {type(model).__name__}, {params / 1e6:.1f}M parameters, {len(model.feature_info)} blocks, "
          f"{model.image_size}x{model.image_size} input, {steps}")
    if args.checkpoint:
        print(f"checkpoint {args.checkpoint}: all tensors the features use fit")
    print(f"{'b':>3}  {'stage':11} {'module':32} {'channels':>8} {'size':>5}")
    for b in model.feature_info:
        print(f"{b.index:>3}  {b.stage:11} {b.module:32} {b.num_chs:>8} {b.resolution:>5}")
    if model.block_aliases:
        print("block names: " + ", ".join(f"{k} = {v}" for k, v in model.block_aliases.items()))
    return 0
