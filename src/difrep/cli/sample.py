"""``difrep sample``: images from an unconditional diffusion model, DDPM or DDIM, as a PNG grid."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..diffusion import sample
from ..distributed import init_distributed
from ..errors import UserError
from ..utils.images import save_grid
from .common import add_model_args, build_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample images from a diffusion model to a PNG grid",
                       description="Draw images from an unconditional ADM U-Net with DDPM (ancestral, the learned "
                       "variance when the model has one) or DDIM, on --steps evenly respaced noise steps.")
    add_model_args(p)
    p.add_argument("--method", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--steps", type=int, default=50, help="respaced sampling steps (1..diffusion_steps)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    p.add_argument("--num", type=int, default=64, help="number of images")
    p.add_argument("--nrow", type=int, help="images per grid row (default: square)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="PNG file of the grid")
    p.add_argument("--save-tensor", help="also save the images as a .pt tensor in [-1, 1]")
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    _, _, device = init_distributed()
    model = build_model(args, extra).to(device)
    began = time.perf_counter()
    images = sample(model, args.num, steps=args.steps, method=args.method, eta=args.eta, seed=args.seed,
                    batch_size=args.batch_size, device=device, progress=True)
    seconds = time.perf_counter() - began
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, out, args.nrow)
    if args.save_tensor:
        torch.save(images.cpu(), args.save_tensor)
    print(f"wrote {out}: {args.num} images, {args.method.upper()} with {args.steps} steps, {seconds:.1f}s")
    return 0
