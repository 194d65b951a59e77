"""Pretraining and sampling speed of the shipped model's architecture (adm-fmnist-28), against
guided-diffusion's own UNetModel and training loss on the same configuration and the same batches.

    python benchmarks/pretrain.py                   # CPU, batch 32
    python benchmarks/pretrain.py --device cuda --batch-size 256

guided-diffusion's code is the PyPI package guided-diffusion-sdk (installed by `make setup`).
"""

from __future__ import annotations

import argparse
import time

import torch


def _guided(flags: dict):
    from guided_diffusion import gaussian_diffusion as gd
    from guided_diffusion.unet import UNetModel

    size = flags["image_size"]
    model = UNetModel(
        image_size=size, in_channels=flags["in_channels"], model_channels=flags["num_channels"],
        out_channels=2 * flags["in_channels"],
        num_res_blocks=flags["num_res_blocks"],
        attention_resolutions=tuple(size // int(r) for r in flags["attention_resolutions"].split(",")),
        channel_mult=tuple(int(m) for m in flags["channel_mult"].split(",")), num_head_channels=flags["num_head_channels"],
        use_scale_shift_norm=True, resblock_updown=True,
    )
    diffusion = gd.GaussianDiffusion(betas=gd.get_named_beta_schedule("linear", 1000),
                                     model_mean_type=gd.ModelMeanType.EPSILON,
                                     model_var_type=gd.ModelVarType.LEARNED_RANGE, loss_type=gd.LossType.MSE)
    return model, diffusion


def time_steps(model, losses, batch: int, device: str, steps: int, channels: int) -> float:
    """Training steps per second (AdamW, hybrid loss), after one warm-up step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.rand(batch, channels, 28, 28, generator=gen) * 2 - 1).to(device)
    for i in range(steps + 1):
        if i == 1:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        loss = losses(model, x0, t, noise)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    from difrep import create_model
    from difrep.diffusion import sample
    from difrep.models.registry import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=16)
    args = p.parse_args()

    flags = {k: v for k, v in vars(PRESETS["adm-fmnist-28"].config).items()}
    torch.manual_seed(0)
    ours = create_model("adm-fmnist-28").to(args.device).train()
    theirs, gd_diffusion = _guided(flags)
    theirs.to(args.device).train()
    theirs.load_state_dict(ours.state_dict())
    channels = flags["in_channels"]
    ref = time_steps(theirs, lambda m, x, t, n: gd_diffusion.training_losses(m, x, t, noise=n), args.batch_size,
                     args.device, args.steps, channels)
    mine = time_steps(ours, ours.diffusion.training_losses, args.batch_size, args.device, args.steps, channels)
    print(f"{'case':44} {'steps/s':>8} {'images/s':>9} {'speed-up':>9}")
    print(f"{'train step, guided-diffusion UNetModel + loss':44} {ref:8.2f} {ref * args.batch_size:9.1f} {1:9.2f}x")
    print(f"{'train step, difrep ADMUNet + loss':44} {mine:8.2f} {mine * args.batch_size:9.1f} {mine / ref:9.2f}x")
    ours.eval()
    for method, steps in (("ddim", 50), ("ddpm", 100)):
        start = time.perf_counter()
        sample(ours, args.samples, steps=steps, method=method, batch_size=args.samples, device=args.device)
        seconds = time.perf_counter() - start
        print(f"{f'sampling, {method.upper()} {steps} steps, {args.samples} images':44} {'':8} "
              f"{args.samples / seconds:9.2f} {'':>10}")


if __name__ == "__main__":
    main()
