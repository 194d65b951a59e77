"""The COCO reader: layouts, boxes, polygon and RLE masks, crowd and empty images, category ids, the jitter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from difrep.cli.main import main
from difrep.data import LargeScaleJitter, create_detection_dataset, find_coco
from difrep.data.coco import boxes_from_masks
from difrep.data.readers import DatasetLayoutError
from difrep.errors import UserError

H, W = 40, 60


def _blob() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[5:25, 30:38] = 1
    mask[20:30, 30:50] = 1
    return mask


def write_coco(root, split="val", official=True) -> dict:
    """Three images: a polygon and an RLE object (categories 3 and 7) plus a crowd region; one RLE object in
    uncompressed form; no object at all."""
    images = root / (f"{split}2017" if official else f"images/{split}")
    images.mkdir(parents=True)
    for i in (1, 2, 3):
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(images / f"{i:03d}.png")
    rle = mask_utils.encode(np.asfortranarray(_blob()))
    rle["counts"] = rle["counts"].decode("ascii")
    blob = _blob()
    uncompressed = {"size": [H, W], "counts": [int(c) for c in _runs(blob)]}
    data = {
        "images": [{"id": i, "file_name": f"{i:03d}.png", "height": H, "width": W} for i in (1, 2, 3)],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 4, 10, 6], "area": 60, "iscrowd": 0,
             "segmentation": [[2, 4, 12, 4, 12, 10, 2, 10]]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [30, 5, 20, 25], "area": int(blob.sum()), "iscrowd": 0,
             "segmentation": rle},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 30, 20, 10], "area": 200, "iscrowd": 1,
             "segmentation": rle},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [30, 5, 20, 25], "area": int(blob.sum()), "iscrowd": 0,
             "segmentation": uncompressed},
        ],
    }
    name = f"instances_{split}2017.json" if official else f"instances_{split}.json"
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / name).write_text(json.dumps(data))
    return data


def _runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: alternating run lengths of 0s and 1s in column-major order, written here
    independently of pycocotools."""
    flat = mask.flatten(order="F")
    runs, current, length = [], 0, 0
    for v in flat:
        if v == current:
            length += 1
        else:
            runs.append(length)
            current, length = v, 1
    runs.append(length)
    return runs


def test_boxes_masks_labels_crowd_and_empty_images(tmp_path):
    write_coco(tmp_path)
    ds = create_detection_dataset("coco", tmp_path, "test", check=False)
    assert len(ds) == 3, "an image without objects is kept for evaluation"
    assert ds.classes == ["three", "seven"], "labels in category-id order"
    assert (ds.category_id(1), ds.category_id(2)) == (3, 7)
    image, target, index = ds[0]
    assert index == 0 and image.shape == (3, H, W) and image.dtype == torch.float32
    assert torch.allclose(image, torch.full_like(image, 40 / 255)), "pixels in [0, 1]"
    assert target["labels"].tolist() == [1, 2], "the crowd region is not a training target"
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 4, 12, 10], [30, 5, 50, 30]]))
    polygon, rle = target["masks"].numpy()
    np.testing.assert_array_equal(rle, _blob())
    assert polygon[5:10, 3:12].all() and polygon.sum() == polygon[4:11, 2:13].sum(), "inside its outline"
    _, second, _ = ds[1]
    np.testing.assert_array_equal(second["masks"][0].numpy(), _blob())  # from uncompressed RLE
    _, empty, _ = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, H, W)
    training = create_detection_dataset("coco", tmp_path, "test", keep_empty=False, check=False)
    assert [training.coco.imgs[i]["file_name"] for i in training.image_ids] == ["001.png", "002.png"]


def test_layouts_and_bad_input_are_named(tmp_path):
    write_coco(tmp_path / "official")
    write_coco(tmp_path / "scenes", official=False)
    assert find_coco(tmp_path / "official", "val")[1].name == "val2017"
    assert find_coco(tmp_path / "scenes", "test")[1] == tmp_path / "scenes" / "images" / "val"
    with pytest.raises(DatasetLayoutError, match="instances_train2017.json"):
        find_coco(tmp_path / "official", "train")
    with pytest.raises(DatasetLayoutError, match="84,|5,000|expected"):
        create_detection_dataset("coco", tmp_path / "official", "val")
    (tmp_path / "official" / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable COCO annotation file .*instances_val2017.json"):
        create_detection_dataset("coco", tmp_path / "official", "val", check=False)
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(tmp_path / "scenes" / "images" / "val" / "001.png")
    ds = create_detection_dataset("coco", tmp_path / "scenes", "val", check=False)
    with pytest.raises(UserError, match="001.png is 60x41 but .* says 60x40"):
        ds[0]


def test_data_check_counts_coco(tmp_path, capsys):
    write_coco(tmp_path, "val")
    assert main(["data", "check", "coco", str(tmp_path), "--splits", "val", "--verify"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and " 3 " in out and "5,000" in out, out
    assert "decoded 3 of 3 images" in out


def test_boxes_from_masks_match_a_pixel_loop():
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(5, 17, 23, generator=gen) > 0.97).to(torch.uint8)
    masks[4] = 0
    boxes = boxes_from_masks(masks[:4])
    for mask, box in zip(masks[:4], boxes):
        ys, xs = np.nonzero(mask.numpy())
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert boxes_from_masks(masks[:0]).shape == (0, 4)


def test_the_jitter_is_seeded_keeps_objects_and_flips_boxes(tmp_path):
    write_coco(tmp_path)
    ds = create_detection_dataset("coco", tmp_path, "test", check=False)
    image, target, _ = ds[0]
    same = LargeScaleJitter(W, (1.0, 1.0), flip=0.0)(image, target, torch.Generator().manual_seed(3))
    assert same[0].shape == (3, W, W) and torch.equal(same[0][:, :H], image)
    assert torch.all(same[0][:, H:] == 0.5), "padded with the detector's zero"
    torch.testing.assert_close(same[1]["boxes"], boxes_from_masks(target["masks"]))
    flipped = LargeScaleJitter(W, (1.0, 1.0), flip=1.0)(image, target, torch.Generator().manual_seed(3))
    boxes = boxes_from_masks(target["masks"])
    torch.testing.assert_close(flipped[1]["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
        [W, 0, W, 0]), boxes)
    jitter = LargeScaleJitter(32, (0.5, 2.0))
    ds.train_transform = jitter
    a, b = ds[0, 11], ds[0, 11]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]), "a pure function of the seed"
    assert any(not torch.equal(ds[0, s][0], a[0]) for s in range(12, 16))
    for s in range(20):
        _, t, _ = ds[0, s]
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
        assert bool((t["boxes"][:, 2:] > t["boxes"][:, :2]).all()), "objects cut away are dropped, not kept empty"
