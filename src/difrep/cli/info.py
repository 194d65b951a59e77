"""``difrep info MODEL``: the block table (b, stage, module, channels, resolution) of any backbone."""

from __future__ import annotations

import argparse

import torch

from ..models import PRESETS, create_model
from .overrides import parse_model_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print a model's feature blocks",
        description="Print the paper-numbered feature blocks of a model. Extra --flag value pairs "
        "override guided-diffusion model flags, e.g. difrep info adm --image_size 64 --num_channels 64.",
    )
    p.add_argument("model", nargs="?", help="preset name; omit to list the presets")
    p.add_argument("--checkpoint", help="also load this checkpoint strictly, to check that it fits")
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.model is None:
        print(f"{'model':20} {'checkpoint':28} description")
        for name, preset in sorted(PRESETS.items()):
            print(f"{name:20} {preset.checkpoint or '-':28} {preset.description}")
        return 0
    flags = parse_model_flags(args.model, extra)
    if args.checkpoint:
        model = create_model(args.model, checkpoint=args.checkpoint, **flags)
    else:
        with torch.device("meta"):
            model = create_model(args.model, **flags)
    params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    print(f"{args.model}: {type(model).__name__}, {params / 1e6:.1f}M parameters, {model.num_blocks} blocks, "
          f"{cfg.image_size}x{cfg.image_size} input, {cfg.diffusion_steps} {cfg.noise_schedule} noise steps")
    if args.checkpoint:
        print(f"checkpoint {args.checkpoint}: all {len(model.state_dict())} tensors fit")
    print(f"{'b':>3}  {'stage':8} {'module':18} {'channels':>8} {'size':>5}")
    for b in model.feature_info:
        print(f"{b.index:>3}  {b.stage:8} {b.module:18} {b.num_chs:>8} {b.resolution:>5}")
    return 0
