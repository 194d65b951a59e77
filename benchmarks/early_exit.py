"""Early exit on ADM, a diffusers U-Net and DiT, side by side: full forward vs stopping at a middle block.

Both models are ADM-shaped and of comparable size (random weights): guided-diffusion's 64x64 layout
with 128 channels, and a diffusers ``UNet2DModel`` with the same levels (6 levels are not needed at
64 pixels; 4 levels of 2 resnets, attention at 16 and 8 pixels). Each row times the model's full
forward (the model's own ``forward``: diffusers' ``unet(x, t)``, difrep's ADM) and
``forward_intermediates(..., stop_early=True)`` at the middle block and at the first decoder blocks.

The DiT row has DiT-XL/2's shapes (28 blocks of width 1152, patch 2, 32x32x4 latents of 256-pixel images;
random weights) and times diffusers' own ``DiTTransformer2DModel(x, t, class_labels).sample`` with the null
class against exiting after blocks 7, 14 (the middle) and 21, at ``--dit-batch`` latents (default 1).

    python benchmarks/early_exit.py                 # CPU, batch 8, 64x64; DiT at batch 1
    python benchmarks/early_exit.py --device cuda --batch 64 --dit-batch 64
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's model factories


def adm_model() -> torch.nn.Module:
    from difrep import create_model

    return create_model("adm", image_size=64, num_channels=128, channel_mult="1,2,3,4", num_res_blocks=2,
                        attention_resolutions="16,8", num_head_channels=64, resblock_updown=False)


def diffusers_model() -> torch.nn.Module:
    from diffusers import UNet2DModel

    from difrep.diffusion import GaussianDiffusion
    from difrep.models.diffusers_unet import DiffusersUNet

    unet = UNet2DModel(sample_size=64, block_out_channels=(128, 256, 384, 512), layers_per_block=2,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                       attention_head_dim=64)
    return DiffusersUNet(unet, GaussianDiffusion())


def dit_model() -> torch.nn.Module:
    """DiT-XL/2 on a stand-in VAE (8x smaller, 4-channel latents, as SD's): only the transformer is timed."""
    from backbone_factories import dit_on_stand_in_vae

    return dit_on_stand_in_vae(size="XL")


def own_forward(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[Callable[[], torch.Tensor],
                                                                                tuple[int, ...]]:
    """The model's own full forward (diffusers' for diffusers models) and the blocks to exit after."""
    if hasattr(model, "transformer"):
        null = torch.full_like(t, model.num_classes)
        return (lambda: model.transformer(x, t, class_labels=null).sample), (7, model.middle_block_index, 21)
    middle = model.num_encoder_blocks + 1
    net = model.unet if hasattr(model, "unet") else model
    return (lambda: net(x, t)), (middle, middle + 2, middle + 5)


def seconds(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dit-batch", type=int, default=1, help="latents a DiT call (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"device {args.device}, U-Nets at batch {args.batch} 64x64, DiT at batch {args.dit_batch} 256x256 "
          f"(32x32x4 latents), fp32, best of {args.repeats}")
    print(f"{'model':34} {'params':>7} {'blocks':>6} {'exit at b':>12} {'ms':>8} {'speed-up':>9}")
    rows = (("ADM (guided-diffusion layout)", adm_model, args.batch), ("diffusers UNet2DModel", diffusers_model, args.batch),
            ("DiT-XL/2 (diffusers DiT)", dit_model, args.dit_batch))
    for name, build, batch in rows:
        model = build().eval().to(args.device)
        x = torch.randn(batch, *model.input_shape, device=args.device)
        t = torch.full((batch,), 150, device=args.device)
        own, exits = own_forward(model, x, t)
        full = seconds(own, args.repeats, args.device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        blocks = len(model.feature_info)
        print(f"{name:34} {params:6.1f}M {blocks:>6} {'full forward':>12} {1000 * full:8.1f} {1.0:8.2f}x")
        for b in exits:
            early = seconds(lambda b=b, m=model, x=x, t=t: m.forward_intermediates(x, t, [b], stop_early=True),
                            args.repeats, args.device)
            print(f"{'':34} {'':>7} {'':>6} {b:>12} {1000 * early:8.1f} {full / early:8.2f}x")
        del model


if __name__ == "__main__":
    main()
