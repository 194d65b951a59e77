"""Mask R-CNN speed and peak memory: training and inference images per second on frozen diffusion features.

Two settings: the paper's (ADM-256 b = 24 at t = 75, ViTDet's heads; the detector and U-Net at --size,
1024 in configs/coco_maskrcnn_gd_b24.yaml) and the scenes benchmark's (the shipped adm-fmnist-28, b = 13,
the narrow heads of configs/scenes_maskrcnn_fmnist.yaml, 256-pixel crops). Each (setting, mode) runs in a
fresh process, and its peak memory is ``measure_peak``'s over the whole case, the U-Net's build included
(CPU: the resident high-water mark above the process's with torch imported; CUDA: peak allocated device
memory). Random weights for ADM-256 (no download), random images with 8 box-shaped
objects each; training = forward, backward and AdamW step of the batch; inference = one image at a time
(difrep's evaluation batches images of one size, ``run.eval_batch``).

    python benchmarks/detection.py                          # CPU: paper setting at 512, batch 1
    python benchmarks/detection.py --device cuda --size 1024 --batch 4 --iterations 10
    python benchmarks/detection.py --flops                  # FLOPs of the paper setting, counted on meta tensors
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from measure import seconds_per_step

SETTINGS = ("paper: adm-256-uncond b=24, ViTDet heads", "scenes: adm-fmnist-28 b=13, narrow heads")


def _build(setting: str, size: int, device: str):
    from difrep import create_model
    from difrep.dense import DetectionBackbone, MaskRCNNConfig, build_mask_rcnn

    torch.manual_seed(0)
    if setting.startswith("paper"):
        model, t, block, input_size, head = create_model("adm-256-uncond"), 75, 24, size, MaskRCNNConfig()
        classes = 80
    else:
        model, t, block, input_size = create_model("adm-fmnist-28", pretrained=True), 50, 13, 84
        size, classes = 256, 10
        head = MaskRCNNConfig(out_channels=64, rpn_convs=1, box_head="mlp", representation=256, mask_convs=2,
                              roi_batch=128, rpn_post_nms_train=1000, rpn_post_nms_test=500)
    model.freeze()
    model.prune_intermediate_layers([block])
    backbone = DetectionBackbone(model, t, block, input_size, size, head.out_channels, head.channels)
    net = build_mask_rcnn(backbone, classes, head).to(device)
    model.eval()
    return net, size, classes


def _targets(n: int, size: int, classes: int, device: str, gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    out = []
    for _ in range(n):
        corner = torch.randint(0, size // 2, (8, 2), generator=gen)
        extent = torch.randint(size // 16, size // 2, (8, 2), generator=gen)
        boxes = torch.cat([corner, corner + extent], 1).float()
        masks = torch.zeros(8, size, size, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[k, y0:y1, x0:x1] = 1
        out.append({"boxes": boxes.to(device), "labels": torch.randint(1, classes + 1, (8,), generator=gen).to(device),
                    "masks": masks.to(device)})
    return out


def run_case(setting: str, mode: str, device: str, batch: int, iterations: int, size: int) -> dict:
    net, size, classes = _build(setting, size, device)
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=gen).to(device) for _ in range(batch if mode == "train" else 1)]
    if mode == "train":
        net.train()
        net.backbone.backbone.eval()
        targets = _targets(batch, size, classes, device, gen)
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)

        def step() -> None:
            loss = sum(net(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        net.eval()

        @torch.no_grad()
        def step() -> None:
            net(images)

    seconds = seconds_per_step(step, iterations, device)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return {"images_per_s": len(images) / seconds, "seconds": seconds, "trainable_m": trainable / 1e6, "size": size}


def count_flops(size: int, rois: int = 512, positives: int = 128) -> dict:
    """FLOPs per image of the paper setting, counted by torch's FlopCounterMode on meta tensors (no compute):
    the frozen U-Net's forward to b = 24 at ``size``, and the pyramid, RPN head, box head (``rois`` RoIs) and
    mask head (``positives`` RoIs) forward, at a 1024 detector input."""
    from torch.utils.flop_counter import FlopCounterMode

    from difrep import create_model
    from difrep.dense import DetectionBackbone, MaskRCNNConfig, build_mask_rcnn
    from difrep.dense.adapter import noisy_features

    with torch.device("meta"):
        model = create_model("adm-256-uncond")
        model.prune_intermediate_layers([24])
        net = build_mask_rcnn(DetectionBackbone(model, 75, 24, size, 1024), 80, MaskRCNNConfig())
        image = torch.zeros(1, 3, size, size)
        stride16 = torch.zeros(1, model.block_info(24).num_chs, 64, 64)
    with FlopCounterMode(display=False) as unet, torch.no_grad():
        noisy_features(model, image, 75, torch.zeros_like(image), [24])
    with FlopCounterMode(display=False) as heads:
        levels = net.backbone.pyramid(stride16)
        net.rpn.head(list(levels.values()))
        net.roi_heads.box_head(torch.zeros(rois, 256, 7, 7, device="meta"))
        net.roi_heads.mask_predictor(net.roi_heads.mask_head(torch.zeros(positives, 256, 14, 14, device="meta")))
    return {"unet": unet.get_total_flops(), "heads": heads.get_total_flops()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1, help="training batch (inference runs one image at a time)")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="the paper setting's detector and U-Net size")
    parser.add_argument("--flops", action="store_true", help="count the paper setting's FLOPs instead of timing")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flops:
        print("FLOPs per image, paper setting (ADM-256 to b = 24, ViTDet heads, 1024 detector input), counted on "
              "meta tensors")
        print(f"{'U-Net input':>11} {'U-Net fwd':>10} {'heads fwd':>10} {'training step':>14}")
        for size in (1024, 512):
            f = count_flops(size)
            train = f["unet"] + 3 * f["heads"]  # frozen U-Net: forward only; heads: forward + backward (~2x)
            print(f"{size:>11} {f['unet'] / 1e12:8.2f} T {f['heads'] / 1e12:8.2f} T {train / 1e12:12.2f} T")
        return
    if args.case:
        from difrep.features.memory import measure_peak

        result, peak = measure_peak(lambda: run_case(*args.case, args.device, args.batch, args.iterations, args.size),
                                    args.device)
        print(json.dumps({**result, "peak_gib": peak / 2**30}))
        return
    print(f"Mask R-CNN on frozen diffusion features, {args.device}, fp32, training batch {args.batch}, "
          f"{args.iterations} iterations after a warm-up")
    print(f"{'setting':44} {'size':>5} {'mode':>6} {'trainable':>10} {'images/s':>9} {'s/it':>7} {'peak memory':>12}")
    for setting in SETTINGS:
        for mode in ("train", "infer"):
            proc = subprocess.run([sys.executable, __file__, "--case", setting, mode, "--device", args.device,
                                   "--batch", str(args.batch), "--iterations", str(args.iterations), "--size",
                                   str(args.size)], capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{setting:44} {r['size']:5d} {mode:>6} {r['trainable_m']:9.1f}M {r['images_per_s']:9.3f} "
                  f"{r['seconds']:7.2f} {r['peak_gib']:10.2f} GiB")


if __name__ == "__main__":
    main()
