"""Early exit on ADM and on a diffusers U-Net, side by side: full forward vs stopping at a middle block.

Both models are ADM-shaped and of comparable size (random weights): guided-diffusion's 64x64 layout
with 128 channels, and a diffusers ``UNet2DModel`` with the same levels (6 levels are not needed at
64 pixels; 4 levels of 2 resnets, attention at 16 and 8 pixels). Each row times the model's full
forward (the model's own ``forward``: diffusers' ``unet(x, t)``, difrep's ADM) and
``forward_intermediates(..., stop_early=True)`` at the middle block and at the first decoder blocks.

    python benchmarks/early_exit.py                 # CPU, batch 8, 64x64
    python benchmarks/early_exit.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import time

import torch


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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"device {args.device}, batch {args.batch}, 64x64, fp32, best of {args.repeats}")
    print(f"{'model':34} {'params':>7} {'blocks':>6} {'exit at b':>12} {'ms':>8} {'speed-up':>9}")
    for name, build in (("ADM (guided-diffusion layout)", adm_model), ("diffusers UNet2DModel", diffusers_model)):
        model = build().eval().to(args.device)
        x = torch.randn(args.batch, 3, 64, 64, device=args.device)
        t = torch.full((args.batch,), 150, device=args.device)
        middle = model.num_encoder_blocks + 1
        own = model.unet if hasattr(model, "unet") else model
        full = seconds(lambda: own(x, t), args.repeats, args.device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:34} {params:6.1f}M {model.num_blocks:>6} {'full forward':>12} {1000 * full:8.1f} {1.0:8.2f}x")
        for b in (middle, middle + 2, middle + 5):
            early = seconds(lambda b=b: model.forward_intermediates(x, t, [b], stop_early=True), args.repeats,
                            args.device)
            print(f"{'':34} {'':>7} {'':>6} {b:>12} {1000 * early:8.1f} {full / early:8.2f}x")


if __name__ == "__main__":
    main()
