"""``difrep demo``: an end-to-end feature extraction on real images, in seconds on a CPU.

Until difrep ships a trained diffusion model, the demo uses a randomly initialised ADM U-Net:
it shows the mechanics (block table, batched timesteps, early stop, shapes), not representation quality.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ..data import DEBIAN_FASHION_MNIST, load_fashion_mnist
from ..features import FeatureExtractor
from ..models import create_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="extract features from a small ADM on Fashion-MNIST images")
    p.add_argument("--data", default=str(DEBIAN_FASHION_MNIST), help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--images", type=int, default=16, help="number of test images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def _to_model_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 28, 28] grayscale to RGB in [-1, 1] at the model's resolution."""
    x = images[:, None].float().div(255).expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.mul(2).sub(1)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    torch.manual_seed(args.seed)
    model = create_model("adm", image_size=64, num_channels=64, num_res_blocks=2, attention_resolutions="16,8",
                         num_head_channels=32, resblock_updown=True, learn_sigma=True)
    print(f"model: ADM U-Net 64x64, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
          f"(random weights), {model.num_blocks} blocks\n")
    print(f"{'b':>3}  {'stage':8} {'module':18} {'channels':>8} {'size':>5}")
    for b in model.feature_info:
        print(f"{b.index:>3}  {b.stage:8} {b.module:18} {b.num_chs:>8} {b.resolution:>5}")

    images, labels = load_fashion_mnist(args.data, "test")
    x = _to_model_input(images[: args.images], model.image_size)
    middle = model.num_encoder_blocks + 1
    blocks = [middle - 3, middle, middle + 5]
    timesteps = [90, 150, 300]
    extractor = FeatureExtractor(model, timesteps=timesteps, blocks=blocks, chunk_size=64)
    start = time.perf_counter()
    feats = extractor(x, indices=list(range(len(x))))
    elapsed = time.perf_counter() - start
    print(f"\n{len(x)} Fashion-MNIST test images ({args.data}), labels {labels[: len(x)].tolist()}")
    print(f"T={timesteps} x B={blocks}: one folded forward of {len(x) * len(timesteps)} inputs, "
          f"stopped at block {max(blocks)} of {model.num_blocks}, {elapsed:.2f}s\n")
    print(f"{'t':>4} {'b':>3}  {'shape':22} {'mean':>8} {'std':>8}")
    for (t, b), f in feats.items():
        print(f"{t:>4} {b:>3}  {tuple(f.shape)!s:22} {f.mean().item():8.4f} {f.std().item():8.4f}")
    return 0
