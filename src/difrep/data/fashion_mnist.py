"""Fashion-MNIST from IDX files: Debian's ``dataset-fashion-mnist`` (gzipped) or a torchvision root."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingFileError, UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an unsigned-byte IDX file (optionally gzipped), checking its header against its size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: cannot be read as an IDX file ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise UserError(f"{path}: {len(data)} bytes, but its header {dims} needs {expected}: truncated file?")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy())


def load_fashion_mnist(root: str | Path = DEBIAN_FASHION_MNIST, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 28, 28] uint8 and labels [N] int64 of one split ('train' or 't10k'/'test')."""
    if split not in _SPLIT_PREFIX:
        raise UserError(f"split={split!r}: use 'train' or 'test'")
    root, prefix = Path(root), _SPLIT_PREFIX[split]
    found = {}
    for kind, ndim in (("images", 3), ("labels", 1)):
        name = f"{prefix}-{kind}-idx{ndim}-ubyte"
        candidates = [d / f for d in (root, root / "FashionMNIST" / "raw") for f in (f"{name}.gz", name)]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise MissingFileError(
                f"Fashion-MNIST {split} {kind} not found in {root} (looked for {name}[.gz]); "
                "on Debian/Ubuntu: apt-get install dataset-fashion-mnist"
            )
        found[kind] = read_idx(path)
    images, labels = found["images"], found["labels"].long()
    if len(images) != len(labels):
        raise UserError(f"{root}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels
