"""``difrep data check NAME PATH``: what a data-set folder holds, before a long run relies on it."""

from __future__ import annotations

import argparse
from functools import partial

from ..data import (
    CATALOG,
    CocoDetection,
    DatasetLayoutError,
    ImageDataset,
    SegmentationDataset,
    create_dataset,
    create_detection_dataset,
    create_segmentation_dataset,
    find_unreadable,
    load_labels,
)
from ..data.catalog import check_counts
from ..data.loader import default_workers
from ..errors import UserError
from .scenes import add_make_scenes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect data sets, make the scenes benchmark")
    actions = p.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check",
        help="count classes and images per split and compare with the paper's",
        description="Data sets: " + "; ".join(f"{k}: {v.layout}" for k, v in CATALOG.items()),
    )
    check.add_argument("name", choices=list(CATALOG))
    check.add_argument("path")
    check.add_argument("--splits", default="train,test", help="comma-separated splits (default train,test)")
    check.add_argument("--class-list", help="imagenet-50: file of the 50 WordNet ids")
    check.add_argument("--verify", action="store_true",
                       help="decode every image (and mask) and list the unreadable ones")
    check.add_argument("--workers", type=int, default=None)
    check.set_defaults(run=run)
    add_make_scenes(actions)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise UserError(f"unexpected arguments {extra}")
    spec = CATALOG[args.name]
    options = {"class_list": args.class_list} if args.class_list else {}
    print(f"{spec.title} at {args.path}")
    print(f"{'split':8} {'classes':>8} {'images':>10} {'expected':>10}  status")
    failed = False
    for split in args.splits.split(","):
        try:
            if spec.kind == "segmentation":
                ds = create_segmentation_dataset(args.name, args.path, split, check=False)
            elif spec.kind == "detection":
                ds = create_detection_dataset(args.name, args.path, split, check=False)
            else:
                ds = create_dataset(args.name, args.path, split, check=False, **options)
        except (FileNotFoundError, ValueError, UserError) as err:  # DatasetLayoutError is a UserError
            print(f"{split:8} {'-':>8} {'-':>10} {'-':>10}  error: {err}")
            failed = True
            continue
        if isinstance(ds, SegmentationDataset):
            classes = ds.num_classes
        elif isinstance(ds, CocoDetection):
            classes = len(ds.classes)
        else:
            classes = len(set(ds.targets))
        expected = spec.counts.get("test" if split == "val" else split)
        status = "ok"
        try:
            check_counts(args.name, args.path, split, len(ds.classes), len(ds))
        except DatasetLayoutError:
            status = "MISMATCH"
            failed = True
        print(f"{split:8} {classes:>8} {len(ds):>10,} {f'{expected:,}' if expected else '-':>10}  {status}")
        if args.verify and isinstance(ds, ImageDataset):
            workers = default_workers() if args.workers is None else args.workers
            bad = find_unreadable([p for p, _ in ds.samples], workers)
            for msg in bad:
                print(f"  {msg}")
            print(f"  decoded {len(ds) - len(bad):,} of {len(ds):,} images")
            failed |= bool(bad)
        if args.verify and isinstance(ds, CocoDetection):
            workers = default_workers() if args.workers is None else args.workers
            bad = find_unreadable([ds.image_dir / ds.coco.imgs[i]["file_name"] for i in ds.image_ids], workers)
            for msg in bad:
                print(f"  {msg}")
            print(f"  decoded {len(ds) - len(bad):,} of {len(ds):,} images")
            failed |= bool(bad)
        if args.verify and isinstance(ds, SegmentationDataset):
            workers = default_workers() if args.workers is None else args.workers
            bad = find_unreadable([image for image, _ in ds.samples], workers)
            bad_masks = find_unreadable([mask for _, mask in ds.samples], workers,
                                        load=partial(load_labels, num_classes=ds.num_classes))
            for msg in bad + bad_masks:
                print(f"  {msg}")
            print(f"  decoded {len(ds) - len(bad):,} of {len(ds):,} images "
                  f"and {len(ds) - len(bad_masks):,} of {len(ds):,} masks")
            failed |= bool(bad or bad_masks)
    return 1 if failed else 0
