"""``difrep scenes-study``: UperNet (or Mask R-CNN) on the shipped model's features against a random-init copy."""

from __future__ import annotations

import argparse

from ..data.fashion_mnist import DEBIAN_FASHION_MNIST
from ..dense.detection_study import run_detection_study
from ..dense.study import run_scenes_study
from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scenes-study", help="segmentation or detection on the Fashion-MNIST scenes (docs/dense.md)",
                       description="--task segmentation: choose t and b on held-out training scenes, then train "
                       "UperNet on the shipped model's frozen features (one block and four), on a random-init copy, "
                       "and on a ResNet-18 from pixels. --task detection: Mask R-CNN on the shipped model's frozen "
                       "features and on a random-init copy's, at the t and b the segmentation study chose (--timestep, --block). "
                       "Several seeds; rerun to resume.")
    p.add_argument("--task", choices=["segmentation", "detection"], default="segmentation")
    p.add_argument("--scenes", required=True, help="folder written by difrep data make-scenes")
    p.add_argument("--fashion-root", default=str(DEBIAN_FASHION_MNIST))
    p.add_argument("--config", help="default: configs/scenes_upernet_fmnist.yaml (segmentation), "
                   "configs/scenes_maskrcnn_fmnist.yaml (detection)")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iterations", type=int, help="per run (default 300 for segmentation, 400 for detection)")
    p.add_argument("--select-iterations", type=int, default=150)
    p.add_argument("--max-test", type=int, default=200, help="test scenes evaluated (default 200)")
    p.add_argument("--timestep", type=int, help="detection: the noise step t (default 50); pass the one the "
                   "segmentation study chose on held-out scenes (its summary.json, \"chosen\")")
    p.add_argument("--block", type=int, help="detection: the block b (default 13), likewise")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise UserError(f"unexpected arguments {extra}")
    if args.task == "detection":
        given = {k: v for k, v in (("t", args.timestep), ("block", args.block)) if v is not None}
        summary = run_detection_study(args.scenes, args.out, args.config or "configs/scenes_maskrcnn_fmnist.yaml",
                                      args.seeds, args.iterations or 400, args.max_test, **given)
        for row in summary["results"]:
            print(f"{row['variant']:35} box AP {row['bbox_AP_mean']:5.1f} +- {row['bbox_AP_std']:.1f}, "
                  f"mask AP {row['segm_AP_mean']:5.1f} +- {row['segm_AP_std']:.1f}")
        return 0
    if args.timestep is not None or args.block is not None:
        raise UserError("--timestep and --block are for --task detection; the segmentation study chooses t and b "
                        "on held-out training scenes")
    summary = run_scenes_study(args.scenes, args.fashion_root, args.out,
                               args.config or "configs/scenes_upernet_fmnist.yaml", args.seeds, args.iterations or 300,
                               args.select_iterations, args.max_test)
    best = summary["chosen"]
    print(f"chosen on held-out training scenes: t={best['t']}, b={best['b']} ({best['heldout_mIoU']:.1f} mIoU)")
    for row in summary["results"]:
        print(f"{row['variant']:45} mIoU {row['mean']:5.1f} +- {row['std']:.1f}  (aAcc {row['aAcc']:.1f})")
    return 0
