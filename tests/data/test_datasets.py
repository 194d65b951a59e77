"""Each data set read from a tiny fake copy of its official layout: splits, labels, counts, errors."""

from __future__ import annotations

import re

import pytest
from fakes import (
    label_of,
    make_aircraft,
    make_cars,
    make_cub,
    make_dogs,
    make_flowers,
    make_imagenet,
    make_nabirds,
)

from difrep.data import CATALOG, DatasetLayoutError, create_dataset
from difrep.data.catalog import check_counts

# name, builder, root to give (relative to tmp_path), classes, train images, test images
LAYOUTS = [
    ("cub200", make_cub, "", 3, 6, 3),
    ("nabirds", make_nabirds, "", 3, 6, 3),
    ("aircraft", make_aircraft, "", 3, 6, 3),
    ("cars", make_cars, "", 3, 6, 3),
    ("dogs", make_dogs, "", 3, 6, 3),
    ("flowers102", make_flowers, "", 102, 5, 4),
    ("imagenet", make_imagenet, "", 3, 9, 6),
    ("folder", make_imagenet, "", 3, 9, 6),
]


@pytest.mark.parametrize("name, build, sub, classes, n_train, n_test", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_layout_reads_splits_and_labels(tmp_path, name, build, sub, classes, n_train, n_test):
    build(tmp_path)
    for split, n in (("train", n_train), ("test", n_test)):
        ds = create_dataset(name, tmp_path / sub, split, check=False)
        assert len(ds) == n and len(ds.classes) == classes
        for i in range(len(ds)):
            image, label, index = ds[i]
            assert index == i
            assert image.mode == "RGB"
            assert label_of(image) == label, f"{name} {split} sample {i}: image and label disagree"


def test_the_archive_folder_itself_is_accepted(tmp_path):
    base = make_cub(tmp_path)
    assert len(create_dataset("cub200", base, "train", check=False)) == 6


def test_nabirds_uses_leaf_classes_only(tmp_path):
    make_nabirds(tmp_path)
    ds = create_dataset("nabirds", tmp_path, "train", check=False)
    assert ds.classes == ["Class number 295", "Class number 300", "Class number 1010"]


def test_flowers_train_is_train_plus_val(tmp_path):
    make_flowers(tmp_path)
    assert len(create_dataset("flowers102", tmp_path, "trainonly", check=False)) == 3
    assert len(create_dataset("flowers102", tmp_path, "val", check=False)) == 2


@pytest.mark.parametrize("name, build", [(n, b) for n, b, *_ in LAYOUTS if n != "folder"])
def test_partial_copy_gets_a_clear_message(tmp_path, name, build):
    build(tmp_path)
    spec = CATALOG[name]
    with pytest.raises(DatasetLayoutError, match=rf"{re.escape(spec.title)} at .*found .*expected.*Expected layout.*check=False"):
        create_dataset(name, tmp_path, "train")


def test_counts_that_match_the_paper_pass():
    check_counts("cub200", "/x", "train", 200, 5994)
    check_counts("flowers102", "/x", "test", 102, 6149)
    with pytest.raises(DatasetLayoutError, match=r"5,993 train images \(expected 5,994\)"):
        check_counts("cub200", "/x", "train", 200, 5993)


def test_wrong_layouts_name_what_is_missing(tmp_path):
    with pytest.raises(DatasetLayoutError, match="expected images.txt"):
        create_dataset("cub200", tmp_path, "train")
    make_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="missing file .*train_test_split.txt"):
        create_dataset("cub200", tmp_path, "train", check=False)
    with pytest.raises(ValueError, match="unknown data set 'cub'"):
        create_dataset("cub", tmp_path)
    with pytest.raises(DatasetLayoutError, match="split='holdout'"):
        create_dataset("dogs", tmp_path, "holdout")


def test_dogs_labels_must_match_folders(tmp_path):
    import numpy as np
    from scipy.io import savemat

    make_dogs(tmp_path)
    savemat(tmp_path / "train_list.mat", {"file_list": np.array(["n02085620-Chihuahua/x.jpg"], dtype=object)[:, None],
                                          "labels": np.array([[2]])})
    with pytest.raises(DatasetLayoutError, match="does not match the class folders"):
        create_dataset("dogs", tmp_path, "train", check=False)


def test_imagenet_label_subsets(tmp_path, monkeypatch):
    from difrep.data import readers

    make_imagenet(tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"12811 of the 12811 images of the ImageNet 1percent split are missing"):
        create_dataset("imagenet-1pct", tmp_path, "train", check=False)
    monkeypatch.setattr(readers, "_split_file", lambda name: ["n01440764_2.JPEG", "n01484850_1.JPEG"])
    ds = create_dataset("imagenet-1pct", tmp_path, "train", check=False)
    assert sorted(p.name for p, _ in ds.samples) == ["n01440764_2.JPEG", "n01484850_1.JPEG"]
    assert [label for _, label in sorted(ds.samples)] == [0, 2], "subset keeps the 1000-class indices"
    assert len(create_dataset("imagenet-1pct", tmp_path, "test", check=False)) == 6


def test_imagenet_class_list(tmp_path):
    make_imagenet(tmp_path)
    (tmp_path / "classes.txt").write_text("n01484850\nn01440764\n")
    ds = create_dataset("imagenet-50", tmp_path, "test", check=False, class_list=tmp_path / "classes.txt")
    assert ds.classes == ["n01484850", "n01440764"]
    assert all(label_of(ds[i][0]) == {0: 2, 1: 0}[ds[i][1]] for i in range(len(ds)))
    (tmp_path / "bad.txt").write_text("n99999999\n")
    with pytest.raises(DatasetLayoutError, match="n99999999"):
        create_dataset("imagenet-50", tmp_path, "test", check=False, class_list=tmp_path / "bad.txt")


def test_shipped_split_files_are_the_standard_ones():
    from collections import Counter

    from difrep.data.readers import _split_file

    for name, total, low, high in (("imagenet_1percent", 12_811, 12, 13), ("imagenet_10percent", 128_116, 128, 129)):
        files = _split_file(name)
        assert len(files) == len(set(files)) == total
        per_class = Counter(f.split("_")[0] for f in files)
        assert len(per_class) == 1000 and low <= min(per_class.values()) <= max(per_class.values()) <= high


def test_fashion_mnist_from_idx(tmp_path):
    from fakes import make_fashion_mnist

    make_fashion_mnist(tmp_path, n=6)
    ds = create_dataset("fashion-mnist", tmp_path, "test", check=False)
    image, label, index = ds[5]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 5 and index == 5
    with pytest.raises(DatasetLayoutError, match=r"6 test images \(expected 10,000\)"):
        create_dataset("fashion-mnist", tmp_path, "test")
