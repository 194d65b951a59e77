"""``difrep data make-scenes``: the Fashion-MNIST scenes benchmark, written in the ADE20K and COCO layouts."""

from __future__ import annotations

import argparse

from ..data.fashion_mnist import DEBIAN_FASHION_MNIST
from ..data.scenes import make_scenes
from ..errors import UserError


def add_make_scenes(actions: argparse._SubParsersAction) -> None:
    """Register ``make-scenes`` under ``difrep data``."""
    p = actions.add_parser(
        "make-scenes",
        help="compose Fashion-MNIST garments into scenes with masks (ADE20K and COCO layouts)",
        description="Writes OUT/ADEChallengeData2016/ (read it with the 'scenes' data set), "
                    "OUT/annotations/instances_{train,val}.json with OUT/images/{train,val}/ (COCO), "
                    "OUT/placements_{train,test}.json and OUT/scenes_manifest.json.",
    )
    p.add_argument("--fashion-root", default=str(DEBIAN_FASHION_MNIST),
                   help=f"Fashion-MNIST IDX files (default {DEBIAN_FASHION_MNIST})")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=2000,
                   help="training scenes (default 2000; 0 skips the split)")
    p.add_argument("--test", type=int, default=500, help="test scenes (default 500; 0 skips the split)")
    p.add_argument("--canvas", type=int, default=84, help="scene side in pixels (default 84)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise UserError(f"unexpected arguments {extra}")
    counts = {"train": args.train, "test": args.test}
    for split, count in counts.items():
        if count < 0:
            raise UserError(f"--{split} {count}: give a number of scenes, or 0 to skip the split")
    if not any(counts.values()):
        raise UserError("--train 0 and --test 0: nothing to make")
    for split, count in counts.items():
        if count:
            summary = make_scenes(args.fashion_root, args.out, split, count, canvas=args.canvas,
                                  seed=args.seed)
            print(f"{split}: {summary['scenes']:,} scenes, {summary['items']:,} garments, "
                  f"{summary['annotations']:,} COCO instances; ADE20K layout in {summary['ade20k']}, "
                  f"COCO annotations {summary['coco']}")
    return 0
