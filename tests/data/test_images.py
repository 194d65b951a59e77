"""Robust decoding, colour-mode conversion, transforms, subsets and loaders."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fakes import label_of, write_image
from PIL import Image

from difrep.data import (
    ImageDataset,
    ImageList,
    ShardSampler,
    UnreadableImageError,
    balanced_subset,
    build_loader,
    build_transform,
    find_unreadable,
    load_rgb,
)


@pytest.fixture()
def folder(tmp_path):
    good = [tmp_path / f"good{i}.jpg" for i in range(3)]
    for i, p in enumerate(good):
        write_image(p, i)
    truncated = tmp_path / "truncated.jpg"
    write_image(truncated, 0, size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:200])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    return good, [truncated, empty, text]


def test_bad_files_are_named(folder):
    _, bad = folder
    for path in bad:
        with pytest.raises(UnreadableImageError, match=rf"unreadable image .*{path.name}"):
            load_rgb(path)
    assert "the file is empty" in str(pytest.raises(UnreadableImageError, load_rgb, bad[1]).value)


def test_dataset_stops_by_default_and_skips_with_a_log_when_asked(folder, caplog):
    good, bad = folder
    samples = [(p, i) for i, p in enumerate(good)] + [(p, 0) for p in bad]
    with pytest.raises(UnreadableImageError, match="truncated.jpg"):
        list(ImageDataset(ImageList(samples, ["a", "b", "c"])))
    ds = ImageDataset(ImageList(samples, ["a", "b", "c"]), transform=build_transform(8), on_error="skip")
    with caplog.at_level(logging.WARNING, logger="difrep.data"):
        batches = list(build_loader(ds, batch_size=4, workers=0))
    images, labels, indices = (torch.cat(x) for x in zip(*[b for b in batches if b is not None]))
    assert indices.tolist() == [0, 1, 2] and labels.tolist() == [0, 1, 2]
    assert [label_of(im) for im in images] == [0, 1, 2]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(p.name in logged for p in bad), "every skipped file is named in the log"


def test_find_unreadable_lists_exactly_the_bad_files(folder):
    good, bad = folder
    found = find_unreadable(good + bad)
    assert len(found) == 3 and all(any(p.name in msg for msg in found) for p in bad)


@pytest.mark.parametrize(
    "mode, make",
    [
        ("L", lambda: Image.new("L", (4, 4), 128)),
        ("RGBA", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0))),
        ("CMYK", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0))),
        ("I;16", lambda: Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))),
        ("P", lambda: Image.new("RGB", (4, 4), (0, 0, 255)).convert("P")),
    ],
)
def test_every_mode_becomes_rgb(tmp_path, mode, make):
    path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    make().save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    pixel = image.getpixel((1, 1))
    expected = {"L": (128, 128, 128), "RGBA": (255, 255, 255), "I;16": (255, 255, 255), "P": (0, 0, 255)}
    if mode in expected:
        assert pixel == expected[mode], f"{mode}: {pixel}"
    else:
        assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60, "CMYK (0,255,255,0) is red"


def test_transform_resizes_centre_crops_and_scales():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))   # blue left quarter, cut by the centre crop
    image.paste((0, 255, 0), (30, 0, 40, 20))  # green right quarter, cut too
    out = build_transform(16)(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out[:, :, 1:-1], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 16, 14),
                               atol=0.05, rtol=0)


def test_only_training_flips():
    image = Image.new("RGB", (16, 16), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 8, 16))
    torch.manual_seed(0)
    train = {bool(build_transform(16, train=True)(image)[0, 0, 0] > 0) for _ in range(20)}
    test = {bool(build_transform(16)(image)[0, 0, 0] > 0) for _ in range(20)}
    assert train == {True, False} and test == {True}


def test_balanced_subset():
    labels = [c for c in range(4) for _ in range(10)]
    sub = balanced_subset(labels, per_class=3, seed=1)
    assert np.bincount([labels[i] for i in sub]).tolist() == [3, 3, 3, 3]
    assert sub == balanced_subset(labels, per_class=3, seed=1) != balanced_subset(labels, per_class=3, seed=2)
    assert len(balanced_subset(labels, fraction=0.1)) == 4
    with pytest.raises(ValueError, match="fewer than per_class=11"):
        balanced_subset(labels, per_class=11)


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(ShardSampler(10, rank=r, world_size=3)) for r in range(3)] == [4, 3, 3]


def test_loader_keeps_workers_alive_and_pins_memory_on_gpu(folder):
    good, _ = folder
    ds = ImageDataset(ImageList([(p, 0) for p in good], ["a"]), build_transform(8))
    loader = build_loader(ds, batch_size=2, train=True, workers=1)
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    assert loader.drop_last and sum(len(b[0]) for b in loader) == 2
