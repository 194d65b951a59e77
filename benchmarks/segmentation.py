"""UperNet training speed and peak memory on the paper's setting: ADM-256 features at crop 512 (input 256).

Each case runs in a fresh process, and its peak memory is ``measure_peak``'s over the whole case (CPU: the
resident high-water mark above the process's with torch imported, the 553M-parameter U-Net's 2.1 GiB
included; CUDA: peak allocated device memory). Random weights, random images and labels; one iteration =
forward, backward and AdamW step of the configured batch.

    python benchmarks/segmentation.py                         # CPU, batch 2, 2 iterations per case
    python benchmarks/segmentation.py --device cuda --iterations 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from measure import seconds_per_step

CASES = {
    "frozen, b = 24": dict(blocks=[24], finetune=False),
    "frozen, B = {33, 30, 27, 24}": dict(blocks=[33, 30, 27, 24], finetune=False),
    "fine-tuned, b = 24": dict(blocks=[24], finetune=True),
}


def run_case(case: str, device: str, batch: int, iterations: int, crop: int) -> dict:
    from difrep import create_model
    from difrep.dense import DenseFeatures, UperNet

    spec = CASES[case]
    torch.manual_seed(0)
    model = create_model("adm-256-uncond")
    if not spec["finetune"]:
        model.freeze()
    model.prune_intermediate_layers(spec["blocks"])
    features = DenseFeatures(model, 90, spec["blocks"], 1024, 256, finetune=spec["finetune"])
    net = UperNet(features, 1024, 150, decoder_channels=1024).to(device).train()
    if not spec["finetune"]:
        model.eval()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=2e-5, weight_decay=0.05)
    images = torch.rand(batch, 3, crop, crop, device=device) * 2 - 1
    labels = torch.randint(0, 150, (batch, crop, crop), device=device)
    noise = torch.randn(batch, *features.noise_shape(), device=device)

    def step() -> None:
        logits, aux = net(images, noise, with_aux=True)
        loss = torch.nn.functional.cross_entropy(logits, labels) + 0.4 * torch.nn.functional.cross_entropy(aux, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = seconds_per_step(step, iterations, device)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return {"case": case, "it_per_s": 1 / seconds, "seconds": seconds, "trainable_m": trainable / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        from difrep.features.memory import measure_peak

        result, peak = measure_peak(lambda: run_case(args.case, args.device, args.batch, args.iterations, args.crop),
                                    args.device)
        print(json.dumps({**result, "peak_gib": peak / 2**30}))
        return
    print(f"UperNet on adm-256-uncond features, crop {args.crop} -> input 256, batch {args.batch}, {args.device}, "
          f"fp32, {args.iterations} iterations after a warm-up")
    print(f"{'case':32} {'trainable':>10} {'s/it':>8} {'it/s':>7} {'peak memory':>12}")
    for case in CASES:
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--device", args.device, "--batch",
                               str(args.batch), "--iterations", str(args.iterations), "--crop", str(args.crop)],
                              capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{case:32} {r['trainable_m']:9.1f}M {r['seconds']:8.2f} {r['it_per_s']:7.3f} {r['peak_gib']:10.2f} GiB")


if __name__ == "__main__":
    main()
