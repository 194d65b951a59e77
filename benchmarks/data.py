"""Decode + transform throughput of the data loader (ImageNet-sized JPEGs to 256x256 in [-1, 1]).

Compare the images/s with the extractor's (benchmarks/extract.py): loading keeps up when it is
higher. Generates its own JPEGs (500x375, ImageNet's typical size) in a temporary folder.

    python benchmarks/data.py --images 256 --workers 0,1,2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from difrep.data import ImageDataset, ImageList, build_loader, build_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f"{i}.jpg"
            pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
            paths.append((path, 0))
        ds = ImageDataset(ImageList(paths, ["x"]), build_transform(args.size, train=True))
        print(f"| workers | images/s (decode + resize {args.size} + crop + flip) |")
        print("|---|---|")
        for workers in (int(w) for w in args.workers.split(",")):
            loader = build_loader(ds, args.batch_size, train=False, workers=workers)
            for _ in loader:  # start the workers and warm the page cache
                break
            start = time.perf_counter()
            n = sum(len(batch[0]) for batch in loader)
            print(f"| {workers} | {n / (time.perf_counter() - start):.0f} |", flush=True)


if __name__ == "__main__":
    main()
