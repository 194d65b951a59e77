"""Tiny fake copies of data sets in their real on-disk formats."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

# A tiny ADM for the dense-task tests: blocks at 32 and 16 pixels for a 32-pixel input.
TINY_DENSE_ADM = {"image_size": 32, "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1,
                  "attention_resolutions": "16", "num_head_channels": 8}


def write_idx(path, array: torch.Tensor, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.to(torch.uint8).numpy().tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def make_fashion_mnist(root, n: int = 6, prefixes: tuple[str, ...] = ("t10k",)) -> tuple[torch.Tensor, torch.Tensor]:
    """IDX files like Debian's; images carry a label-dependent mean so that features can learn it."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    noise = torch.randint(0, 60, (n, 28, 28), generator=gen)
    images = (noise + (labels * 19)[:, None, None]).to(torch.uint8)
    for prefix in prefixes:
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress=False)
    return images, labels


def color_of(label: int) -> tuple[int, int, int]:
    """A distinct solid colour per label, so a test can check that an image carries its own label."""
    return (40 + 50 * (label % 5), 40 + 50 * ((label // 5) % 5), 40 + 50 * ((label // 25) % 5))


def label_of(image) -> int:
    """Invert color_of on a decoded image (PIL or a [3, H, W] tensor in [-1, 1])."""
    if isinstance(image, torch.Tensor):
        rgb = ((image[:, image.shape[1] // 2, image.shape[2] // 2] + 1) * 127.5).round().int().tolist()
    else:
        rgb = image.getpixel((image.width // 2, image.height // 2))
    digits = [round((c - 40) / 50) for c in rgb]
    return digits[0] + 5 * digits[1] + 25 * digits[2]


def write_image(path, label: int, size: tuple[int, int] = (12, 10)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color_of(label)).save(path)


def make_stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: horizontal stripes, class 1: vertical, class 2: a bright square; noisy, in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.full((n, 1, 28, 28), -1.0)
    images[labels == 0, :, ::4, :] = 1
    images[labels == 1, :, :, ::4] = 1
    images[labels == 2, :, 8:20, 8:20] = 1
    return (images + 0.3 * torch.randn(images.shape, generator=gen)).clamp(-1, 1), labels


def make_cub(root, classes: int = 3, train: int = 2, test: int = 1):
    """CUB_200_2011/ as extracted from CUB_200_2011.tgz."""
    base = root / "CUB_200_2011"
    lines = {"images": [], "labels": [], "split": []}
    names = [f"{c + 1:03d}.Bird_{c}" for c in range(classes)]
    k = 0
    for c, name in enumerate(names):
        for j in range(train + test):
            k += 1
            rel = f"{name}/Bird_{c}_{j}.jpg"
            write_image(base / "images" / rel, c)
            lines["images"].append(f"{k} {rel}")
            lines["labels"].append(f"{k} {c + 1}")
            lines["split"].append(f"{k} {1 if j < train else 0}")
    (base / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{c + 1} {n}" for c, n in enumerate(names)) + "\n")
    return base


def make_nabirds(root):
    """nabirds/ with hierarchy classes that have no images (only leaves are used) and uuid image ids."""
    base = root / "nabirds"
    class_ids = [295, 300, 1010]
    rows = {"images": [], "labels": [], "split": []}
    for c, cid in enumerate(class_ids):
        for j in range(3):
            uid = f"{cid:04d}{j}abc-uuid"
            rel = f"{cid:04d}/{uid}.jpg"
            write_image(base / "images" / rel, c)
            rows["images"].append(f"{uid} {rel}")
            rows["labels"].append(f"{uid} {cid}")
            rows["split"].append(f"{uid} {1 if j < 2 else 0}")
    (base / "images.txt").write_text("\n".join(rows["images"]) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(rows["labels"]) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(rows["split"]) + "\n")
    all_ids = [0, 1, *class_ids, 2000]
    (base / "classes.txt").write_text("\n".join(f"{i} Class number {i}" for i in all_ids) + "\n")
    return base


def make_aircraft(root):
    """fgvc-aircraft-2013b/data/ as extracted from fgvc-aircraft-2013b.tar.gz (variant level)."""
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    for split, n in (("trainval", 2), ("test", 1)):
        lines = []
        for c, v in enumerate(variants):
            for j in range(n):
                image_id = f"{split[:2]}{c}{j:04d}"
                write_image(data / "images" / f"{image_id}.jpg", c)
                lines.append(f"{image_id} {v}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return data.parent


def make_cars(root):
    """stanford_cars/ in torchvision's layout, with .mat annotation structs as in the devkit."""
    import numpy as np
    from scipy.io import savemat

    base = root / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object)[None]})
    for split, n, annos in (("train", 2, base / "devkit" / "cars_train_annos.mat"),
                            ("test", 1, base / "cars_test_annos_withlabels.mat")):
        records = []
        for c in range(len(names)):
            for j in range(n):
                fname = f"{c:02d}{j:03d}.jpg"
                write_image(base / f"cars_{split}" / fname, c)
                records.append((1, 1, 5, 5, c + 1, fname))
        dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
        savemat(annos, {"annotations": np.array(records, dtype=dtype)[None]})
    return base


def make_dogs(root):
    """Stanford Dogs: Images/ from images.tar and {train,test}_list.mat from lists.tar."""
    import numpy as np
    from scipy.io import savemat

    synsets = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02116738-African_hunting_dog"]
    for split, n in (("train", 2), ("test", 1)):
        files, labels = [], []
        for c, s in enumerate(synsets):
            for j in range(n):
                rel = f"{s}/{s.split('-')[0]}_{split}{j}.jpg"
                write_image(root / "Images" / rel, c)
                files.append(rel)
                labels.append(c + 1)
        savemat(root / f"{split}_list.mat", {"file_list": np.array(files, dtype=object)[:, None],
                                              "labels": np.array(labels)[:, None]})
    return root


def make_flowers(root):
    """flowers-102/: jpg/ from 102flowers.tgz, imagelabels.mat and setid.mat."""
    import numpy as np
    from scipy.io import savemat

    base = root / "flowers-102"
    labels = [1, 1, 2, 2, 3, 3, 1, 2, 3]  # 1-based, image_00001 .. image_00009
    for i, label in enumerate(labels, start=1):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", label - 1)
    savemat(base / "imagelabels.mat", {"labels": np.array(labels)[None]})
    savemat(base / "setid.mat", {"trnid": np.array([1, 3, 5])[None], "valid": np.array([2, 4])[None],
                                 "tstid": np.array([6, 7, 8, 9])[None]})
    return base


def make_imagenet(root, wnids=("n01440764", "n01443537", "n01484850"), train: int = 3, val: int = 2):
    for c, w in enumerate(wnids):
        for j in range(train):
            write_image(root / "train" / w / f"{w}_{j + 1}.JPEG", c)
        for j in range(val):
            write_image(root / "val" / w / f"ILSVRC2012_val_{c * 100 + j:08d}.JPEG", c)
    return root


def make_fake_scenes(folder: Path, train: int, test: int, garments: int = 40, **options: Any) -> tuple[Path, Path]:
    """Fake Fashion-MNIST IDX files and scenes of their garments (``make_scenes`` options, seed 0) under ``folder``;
    returns (the garments' root, the scenes' root)."""
    from difrep.data.scenes import make_scenes

    fashion, scenes = folder / "fmnist", folder / "scenes"
    fashion.mkdir(parents=True)
    make_fashion_mnist(fashion, n=garments, prefixes=("train", "t10k"))
    for split, count in (("train", train), ("test", test)):
        make_scenes(fashion, scenes, split, count, seed=0, **options)
    return fashion, scenes


def make_tiny_scenes(tmp_path_factory, train: int, test: int, scale_range: tuple[float, float]):
    """Scenes of 1-2 fake garments on 32 x 32 canvases, in the ADE20K and COCO layouts."""
    return make_fake_scenes(tmp_path_factory.mktemp("tiny"), train, test, garments=60, canvas=32, min_items=1,
                            max_items=2, scale_range=scale_range)[1]


def torchrun_train(args: list[str]) -> None:
    """``difrep train ARGS`` in 2 gloo processes under torchrun; fails with their stderr."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "difrep.cli.main", "train", *args], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def step_and_gap(one: dict, two: dict, init: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """How far a 1-process run moved the float weights from ``init``, and how far a 2-process run ended from it."""
    keys = [k for k, v in one.items() if v.is_floating_point()]
    step = torch.cat([(one[k] - init[k]).flatten() for k in keys]).norm()
    gap = torch.cat([(two[k] - one[k]).flatten() for k in keys]).norm()
    return step, gap


def count_loads(monkeypatch, path: Path) -> list[Path]:
    """Every ``torch.load`` of ``path`` from now on, appended to the returned list (its length: the reads)."""
    reads: list[Path] = []
    load = torch.load

    def counting(f, *args: Any, **kwargs: Any) -> Any:
        if isinstance(f, (str, Path)) and Path(f).resolve() == Path(path).resolve():
            reads.append(Path(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return reads
