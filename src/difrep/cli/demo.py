"""``difrep demo``: an end-to-end feature extraction on real images, in seconds on a CPU.

Until difrep ships a trained diffusion model, the demo uses a randomly initialised ADM U-Net:
it shows the mechanics (block table, batched timesteps, early stop, shapes), not representation quality.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..data import DEBIAN_FASHION_MNIST, build_transform, create_dataset
from ..features import FeatureExtractor
from ..models import create_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="extract features from a small ADM on Fashion-MNIST images")
    p.add_argument("--data", default=str(DEBIAN_FASHION_MNIST), help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--images", type=int, default=16, help="number of test images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    torch.manual_seed(args.seed)
    model = create_model("adm", image_size=64, num_channels=64, num_res_blocks=2, attention_resolutions="16,8",
                         num_head_channels=32, resblock_updown=True, learn_sigma=True)
    print(f"model: ADM U-Net 64x64, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
          f"(random weights), {model.num_blocks} blocks\n")
    print(f"{'b':>3}  {'stage':8} {'module':18} {'channels':>8} {'size':>5}")
    for b in model.feature_info:
        print(f"{b.index:>3}  {b.stage:8} {b.module:18} {b.num_chs:>8} {b.resolution:>5}")

    data = create_dataset("fashion-mnist", args.data, "test", transform=build_transform(model.image_size), check=False)
    samples = [data[i] for i in range(min(args.images, len(data)))]
    x = torch.stack([image for image, _, _ in samples])
    labels = [label for _, label, _ in samples]
    middle = model.num_encoder_blocks + 1
    blocks = [middle - 3, middle, middle + 5]
    timesteps = [90, 150, 300]
    extractor = FeatureExtractor(model, timesteps=timesteps, blocks=blocks, chunk_size=64)
    start = time.perf_counter()
    feats = extractor(x, indices=list(range(len(x))))
    elapsed = time.perf_counter() - start
    print(f"\n{len(x)} Fashion-MNIST test images ({args.data}), labels {labels}")
    print(f"T={timesteps} x B={blocks}: one folded forward of {len(x) * len(timesteps)} inputs, "
          f"stopped at block {max(blocks)} of {model.num_blocks}, {elapsed:.2f}s\n")
    print(f"{'t':>4} {'b':>3}  {'shape':22} {'mean':>8} {'std':>8}")
    for (t, b), f in feats.items():
        print(f"{t:>4} {b:>3}  {tuple(f.shape)!s:22} {f.mean().item():8.4f} {f.std().item():8.4f}")
    return 0
