"""``difrep new-dit FOLDER``: a randomly initialised DiT folder, the random-init control and a CPU-sized DiT."""

from __future__ import annotations

import argparse

from ..models.dit import DIT_SIZES, random_dit, save_random_dit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("new-dit", help="write a randomly initialised DiT folder (read it with --model diffusers:FOLDER)",
                       description="Write a random-init DiTTransformer2DModel of one of DiT's sizes, with DiT's noise "
                       "schedule, to a folder that --model diffusers:FOLDER reads: the random-init control of a "
                       "trained DiT (--vae: the trained pipeline, whose VAE it reuses), or a small DiT on pixels "
                       "(--in-channels 1 or 3, no VAE) for CPU runs.")
    p.add_argument("out", help="the folder to write (new or empty)")
    p.add_argument("--size", choices=sorted(DIT_SIZES), default="XL", help="DiT's S, B, L or XL (default XL)")
    p.add_argument("--depth", type=int, help="transformer blocks (default: the size's)")
    p.add_argument("--width", type=int, help="token width D (default: the size's)")
    p.add_argument("--heads", type=int, help="attention heads (default: the size's)")
    p.add_argument("--patch", type=int, default=2, help="patch size p (default 2)")
    p.add_argument("--sample-size", type=int, default=32, help="the model's input side: latents (32 for 256-pixel "
                   "images and SD's VAE) or pixels (default 32)")
    p.add_argument("--in-channels", type=int, default=4, help="4 for VAE latents (needs --vae), 1 or 3 for pixels")
    p.add_argument("--classes", type=int, default=1000, help="class labels (the null class comes on top)")
    p.add_argument("--vae", help="a VAE folder, or a pipeline folder holding vae/ (e.g. DiT-XL-2-256)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    transformer = random_dit(args.size, args.patch, args.sample_size, args.in_channels, args.classes, args.depth,
                             args.width, args.heads, args.seed)
    out = save_random_dit(args.out, transformer, args.vae)
    params = sum(p.numel() for p in transformer.parameters())
    print(f"{out}: a random-init DiT, {len(transformer.transformer_blocks)} blocks of width {transformer.inner_dim}, "
          f"{params / 1e6:.1f}M parameters; read it with --model diffusers:{out}")
    return 0
