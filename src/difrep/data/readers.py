"""Readers for the official on-disk layouts of the paper's data sets, each returning an ImageList.

torchvision reads ImageFolder trees, FGVC-Aircraft and Stanford Cars; CUB-200-2011, NABirds and
Stanford Dogs have no torchvision reader, and torchvision's Flowers-102 insists on the MD5 of the
downloaded files, so those four are read here. Every reader takes the folder the archive was
extracted to (or its parent) and a split, "train" or "test".
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import numpy as np
from torchvision.datasets import FGVCAircraft, StanfordCars
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..errors import UserError
from .images import ImageList


class DatasetLayoutError(UserError):
    """A data-set folder that does not have the expected layout, split files or counts."""


def _split(split: str, allowed: Iterable[str] = ("train", "test")) -> str:
    split = "test" if split == "val" and "val" not in allowed else split
    if split not in allowed:
        raise DatasetLayoutError(f"split={split!r}: use one of {', '.join(allowed)}")
    return split


def _locate(root: str | Path, folder: str, marker: str) -> Path:
    """The archive's folder: ``root`` itself when it holds ``marker``, else ``root/folder``."""
    root = Path(root)
    for candidate in (root, root / folder):
        if (candidate / marker).exists():
            return candidate
    raise DatasetLayoutError(f"{root}: expected {marker} in it or in {root / folder}")


def _table(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DatasetLayoutError(f"missing file {path}")
    return [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]


def read_folder(root: str | Path, split: str = "train") -> ImageList:
    """A folder of class sub-folders, or one holding ``train/`` and ``val/`` (or ``test/``) such folders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such folder")
    candidates = {"train": ["train"], "test": ["test", "val"], "val": ["val", "test"]}.get(split)
    if candidates is None:
        raise DatasetLayoutError(f"split={split!r}: use train, val or test")
    has_splits = any((root / name).is_dir() for name in ("train", "val", "test"))
    if has_splits:
        folder = next((root / n for n in candidates if (root / n).is_dir()), None)
        if folder is None:
            raise DatasetLayoutError(f"{root}: no {' or '.join(candidates)} folder for split {split!r}")
    elif split == "train":
        folder = root
    else:
        raise DatasetLayoutError(f"{root}: a single folder of classes has only a 'train' split")
    try:
        classes, class_to_idx = find_classes(str(folder))
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise DatasetLayoutError(f"{folder}: {err}") from err
    return ImageList([(Path(p), label) for p, label in samples], classes)


def _split_file(name: str) -> list[str]:
    data = resources.files("difrep.data").joinpath(f"splits/{name}.txt.gz").read_bytes()
    return gzip.decompress(data).decode().split()


def read_imagenet(root: str | Path, split: str = "train", subset: str | None = None) -> ImageList:
    """ImageNet-1k as ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.

    ``subset`` "1percent" or "10percent" keeps the training images of the standard SimCLR label
    split files (shipped with difrep); every listed file must be present.
    """
    split = _split(split)
    images = read_folder(root, "train" if split == "train" else "val")
    if subset is None or split == "test":
        return images
    if subset not in ("1percent", "10percent"):
        raise DatasetLayoutError(f"subset={subset!r}: use '1percent' or '10percent'")
    wanted = set(_split_file(f"imagenet_{subset}"))
    kept = [(p, label) for p, label in images.samples if p.name in wanted]
    missing = len(wanted) - len(kept)
    if missing:
        found = {p.name for p, _ in kept}
        example = sorted(wanted - found)[:3]
        raise DatasetLayoutError(
            f"{root}: {missing} of the {len(wanted)} images of the ImageNet {subset} split are missing "
            f"from train/ (e.g. {', '.join(example)})"
        )
    return ImageList(kept, images.classes)


def read_imagenet_classes(root: str | Path, split: str, class_list: str | Path) -> ImageList:
    """ImageNet restricted to the classes (WordNet ids, one a line) of ``class_list``, relabelled 0..K-1."""
    class_list = Path(class_list)
    if not class_list.is_file():
        raise DatasetLayoutError(f"class list {class_list}: no such file")
    wnids = [line.split()[0] for line in class_list.read_text().splitlines() if line.strip()]
    images = read_imagenet(root, split)
    unknown = [w for w in wnids if w not in images.classes]
    if unknown:
        raise DatasetLayoutError(f"class list {class_list}: {unknown[:5]} are not ImageNet classes in {root}")
    remap = {images.classes.index(w): i for i, w in enumerate(wnids)}
    return ImageList([(p, remap[label]) for p, label in images.samples if label in remap], wnids)


def _read_cub_like(base: Path, split: str, relabel: bool) -> ImageList:
    """CUB-200-2011 and NABirds share a layout: id tables for paths, labels, splits and class names."""
    split = _split(split)
    paths = {k: v for k, v in _table(base / "images.txt")}
    labels = {k: int(v) for k, v in _table(base / "image_class_labels.txt")}
    is_train = {k: v.strip() == "1" for k, v in _table(base / "train_test_split.txt")}
    names = {int(k): v for k, v in _table(base / "classes.txt")}
    used = sorted(set(labels.values()))
    index = {c: i for i, c in enumerate(used)} if relabel else {c: c - 1 for c in used}
    classes = [names[c] for c in used] if relabel else [names[c] for c in sorted(names)]
    samples = [
        (base / "images" / paths[k], index[labels[k]])
        for k in paths
        if is_train.get(k) == (split == "train")
    ]
    return ImageList(samples, classes)


def read_cub(root: str | Path, split: str = "train") -> ImageList:
    """CUB-200-2011 (``CUB_200_2011.tgz``): 200 classes, official train/test split."""
    return _read_cub_like(_locate(root, "CUB_200_2011", "images.txt"), split, relabel=False)


def read_nabirds(root: str | Path, split: str = "train") -> ImageList:
    """NABirds (``nabirds.tar.gz``): the 555 classes that have images, labelled 0..554 by class id."""
    return _read_cub_like(_locate(root, "nabirds", "images.txt"), split, relabel=True)


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise DatasetLayoutError(f"missing file {path}")
    try:
        return loadmat(str(path), squeeze_me=True)
    except (ValueError, OSError, TypeError) as err:
        raise DatasetLayoutError(f"{path}: not a readable .mat file ({err})") from err


def read_dogs(root: str | Path, split: str = "train") -> ImageList:
    """Stanford Dogs (``images.tar`` and ``lists.tar``): ``Images/`` and ``{train,test}_list.mat``."""
    split = _split(split)
    base = _locate(root, "StanfordDogs", "Images")
    lists = base if (base / f"{split}_list.mat").is_file() else base / "lists"
    mat = _loadmat(lists / f"{split}_list.mat")
    files = [str(f) for f in np.atleast_1d(mat["file_list"])]
    labels = [int(v) - 1 for v in np.atleast_1d(mat["labels"])]
    classes = sorted(p.name for p in (base / "Images").iterdir() if p.is_dir())
    for f, label in zip(files, labels):
        if not 0 <= label < len(classes) or f.split("/")[0] != classes[label]:
            raise DatasetLayoutError(f"{lists / f'{split}_list.mat'}: {f} has label {label + 1}, "
                                     f"which does not match the class folders in {base / 'Images'}")
    return ImageList([(base / "Images" / f, label) for f, label in zip(files, labels)], classes)


def read_flowers(root: str | Path, split: str = "train") -> ImageList:
    """Oxford Flowers-102 (``102flowers.tgz``, ``imagelabels.mat``, ``setid.mat``); train = train + val."""
    split = _split(split, ("train", "trainonly", "val", "test"))
    base = _locate(root, "flowers-102", "setid.mat")
    sets = _loadmat(base / "setid.mat")
    labels = np.atleast_1d(_loadmat(base / "imagelabels.mat")["labels"])
    keys = {"train": ["trnid", "valid"], "trainonly": ["trnid"], "val": ["valid"], "test": ["tstid"]}[split]
    ids = [int(i) for key in keys for i in np.atleast_1d(sets[key])]
    samples = [(base / "jpg" / f"image_{i:05d}.jpg", int(labels[i - 1]) - 1) for i in ids]
    return ImageList(samples, [str(c) for c in range(1, 103)])


def read_aircraft(root: str | Path, split: str = "train") -> ImageList:
    """FGVC-Aircraft 2013b at variant level (100 classes); train = trainval. Read by torchvision."""
    split = _split(split)
    base = _locate(root, "fgvc-aircraft-2013b", "data")
    try:
        ds = FGVCAircraft(str(base.parent), split="trainval" if split == "train" else "test",
                          annotation_level="variant")
    except (RuntimeError, FileNotFoundError) as err:
        raise DatasetLayoutError(f"{base}: {err}") from err
    return ImageList([(Path(p), int(label)) for p, label in zip(ds._image_files, ds._labels)], list(ds.classes))


def read_cars(root: str | Path, split: str = "train") -> ImageList:
    """Stanford Cars in torchvision's layout: ``stanford_cars/{devkit,cars_train,cars_test}``. Read by torchvision."""
    split = _split(split)
    base = _locate(root, "stanford_cars", "devkit")
    if base.name != "stanford_cars":
        raise DatasetLayoutError(f"{base}: put devkit/, cars_train/, cars_test/ in a folder named stanford_cars")
    try:
        ds = StanfordCars(str(base.parent), split=split)
    except (RuntimeError, FileNotFoundError) as err:
        raise DatasetLayoutError(f"{base}: {err}") from err
    return ImageList([(Path(p), int(label)) for p, label in ds._samples], list(ds.classes))
