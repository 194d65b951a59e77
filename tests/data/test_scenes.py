"""Fashion-MNIST scenes: the written images, masks and COCO instances against an independent recomposition."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import write_idx
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from difrep.cli.scenes import add_make_scenes
from difrep.data import DEBIAN_FASHION_MNIST, load_fashion_mnist, load_labels, read_ade20k, scenes
from difrep.data.scenes import THRESHOLD, Item, compose, make_scenes
from difrep.errors import MissingFileError, UserError

CANVAS = 48  # small, so that items overlap often
# pycocotools 2.0.x's decode passes copy=False to numpy 2: its own noise, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _soft_shape(gen: torch.Generator, square: bool, peak: int) -> torch.Tensor:
    """A garment-like blob with a soft edge: solid inside, faint at the rim, 0 outside."""
    cy, cx = (int(v) for v in torch.randint(10, 18, (2,), generator=gen))
    radius = int(torch.randint(6, 11, (1,), generator=gen))
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    if square:
        dist = torch.maximum((ys - cy).abs(), (xs - cx).abs())
    else:
        dist = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()
    return ((radius - dist) * 40).clamp(0, peak).round().to(torch.uint8)


def _write_fashion(root, n: int = 12) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """IDX files whose train and test garments differ at every index (discs vs. squares, other labels)."""
    gen = torch.Generator().manual_seed(0)
    discs = torch.stack([_soft_shape(gen, False, 255) for _ in range(n)])
    squares = torch.stack([_soft_shape(gen, True, 180) for _ in range(n)])
    data = {"train": (discs, torch.arange(n) * 3 % 10), "test": (squares, (torch.arange(n) * 7 + 1) % 10)}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = data[split]
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress=False)
    return data


def _recompose(items: list[dict], garments: torch.Tensor, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """The scene as the specification says, pixel by pixel: painter's order, labels from the shown pixel."""
    image = np.zeros((canvas, canvas), np.uint8)
    mask = np.ones((canvas, canvas), np.uint8)
    for item in items:
        size = item["size"]
        resized = F.interpolate(garments[item["garment"]][None, None].float(), size=(size, size),
                                mode="bilinear", align_corners=False)[0, 0]
        resized = resized.round().clamp(0, 255).to(torch.uint8)
        for dy in range(size):
            for dx in range(size):
                value = int(resized[dy, dx])
                if value > 0:
                    image[item["y"] + dy, item["x"] + dx] = value
                    mask[item["y"] + dy, item["x"] + dx] = item["label"] + 2 if value >= THRESHOLD else 0
    return image, mask


def _read(path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        return im.mode, np.array(im)


def _placements(out, split: str) -> list[dict]:
    return json.loads((out / f"placements_{split}.json").read_text())["scenes"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Both splits of one folder, made once for the tests that only read them."""
    root = tmp_path_factory.mktemp("fashion")
    data = _write_fashion(root)
    out = tmp_path_factory.mktemp("scenes")
    summaries = {split: make_scenes(root, out, split, 10, canvas=CANVAS, seed=3)
                 for split in ("train", "test")}
    return root, data, out, summaries


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_pixel_agrees_with_an_independent_recomposition(made, split):
    _, data, out, summaries = made
    folder = {"train": "training", "test": "validation"}[split]
    overlaps = faint_over_solid = 0
    for scene in _placements(out, split):
        assert 2 <= len(scene["items"]) <= 5
        for item in scene["items"]:
            assert item["size"] == round(28 * item["scale"]) and 0.8 <= item["scale"] <= 1.25
            assert 0 <= item["x"] <= CANVAS - item["size"] and 0 <= item["y"] <= CANVAS - item["size"]
            assert item["label"] == int(data[split][1][item["garment"]])
        image, mask = _recompose(scene["items"], data[split][0], CANVAS)
        mode, written = _read(out / "ADEChallengeData2016" / "images" / folder / scene["file_name"])
        assert mode == "RGB" and np.array_equal(written, np.repeat(image[:, :, None], 3, axis=2))
        mode, written_mask = _read(out / "ADEChallengeData2016" / "annotations" / folder / scene["file_name"])
        assert mode == "L" and np.array_equal(written_mask, mask)
        # the cases the rule is about do occur, so the comparison above is not vacuous
        earlier, _ = _recompose(scene["items"][:-1], data[split][0], CANVAS)
        last, _ = _recompose(scene["items"][-1:], data[split][0], CANVAS)
        overlaps += int(((earlier > 0) & (last > 0)).sum())
        faint_over_solid += int(((earlier >= THRESHOLD) & (last > 0) & (last < THRESHOLD)).sum())
    assert overlaps > 0 and faint_over_solid > 0
    assert summaries[split]["items"] == sum(len(s["items"]) for s in _placements(out, split))


def test_the_mask_rule_on_hand_made_garments():
    solid, faint = torch.zeros(28, 28, dtype=torch.uint8), torch.zeros(28, 28, dtype=torch.uint8)
    solid[4:12, 4:12] = 200
    solid[4:12, 12] = 10  # a faint rim
    faint[0:2, 0:2] = 10  # faint over the solid garment
    faint[2:4, 0:2] = 90  # solid over the solid garment (rows 2..3 of the second item lie on rows 6..7)
    items = [Item(0, 3, 1.0, 28, 0, 0), Item(1, 7, 1.0, 28, 4, 4)]
    image, mask, owner = compose(items, torch.stack([solid, faint]), 40)
    assert mask[9, 9] == 3 + 2 and image[9, 9] == 200 and owner[9, 9] == 0  # the later item is 0 there
    assert mask[4, 4] == 0 and image[4, 4] == 10 and owner[4, 4] == -1  # later faint over earlier solid
    assert mask[6, 4] == 7 + 2 and image[6, 4] == 90 and owner[6, 4] == 1  # later solid over earlier solid
    assert mask[8, 12] == 0 and owner[8, 12] == -1  # the earlier item's own faint rim
    assert mask[20, 20] == 1 and mask[8, 13] == 1  # nothing drawn: background


@pytest.mark.parametrize("split", ["train", "test"])
def test_coco_instances_agree_with_the_ade_masks(made, split):
    _, _, out, summaries = made
    coco_split, folder = {"train": ("train", "training"), "test": ("val", "validation")}[split]
    dataset = json.loads((out / "annotations" / f"instances_{coco_split}.json").read_text())
    categories = dataset["categories"]
    assert [(c["id"], c["supercategory"]) for c in categories] == [(i, "garment") for i in range(1, 11)]
    assert categories[0]["name"] == "T-shirt/top" and categories[9]["name"] == "Ankle boot"
    by_image = {image["id"]: [] for image in dataset["images"]}
    for ann in dataset["annotations"]:
        by_image[ann["image_id"]].append(ann)
    assert len(dataset["annotations"]) == summaries[split]["annotations"] > 0
    assert len({ann["id"] for ann in dataset["annotations"]}) == len(dataset["annotations"])
    placements = {scene["image_id"]: scene for scene in _placements(out, split)}
    for image in dataset["images"]:
        assert (image["width"], image["height"]) == (CANVAS, CANVAS)
        ade_image = out / "ADEChallengeData2016" / "images" / folder / image["file_name"]
        assert (out / "images" / coco_split / image["file_name"]).read_bytes() == ade_image.read_bytes()
        _, ade_mask = _read(out / "ADEChallengeData2016" / "annotations" / folder / image["file_name"])
        covered = np.zeros(ade_mask.shape, np.int64)
        for ann in by_image[image["id"]]:
            assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
            instance = mask_utils.decode(ann["segmentation"]).astype(bool)
            ys, xs = np.nonzero(instance)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == instance.sum() >= scenes.MIN_AREA
            assert (ade_mask[instance] == ann["category_id"] + 1).all()
            covered += instance
        assert covered.max() <= 1  # instances of one image do not overlap
        items = placements[image["id"]]["items"]
        annotated = [item for item in items if item["annotation_id"] is not None]
        assert sorted(i["annotation_id"] for i in annotated) == sorted(a["id"] for a in by_image[image["id"]])
        assert all(item["visible_area"] < scenes.MIN_AREA for item in items if item["annotation_id"] is None)
        # every labelled garment pixel is in an instance, except those of items too hidden to annotate
        hidden = sum(item["visible_area"] for item in items if item["annotation_id"] is None)
        assert (ade_mask >= 2).sum() == covered.sum() + hidden


def test_pycocotools_reads_the_annotations(made):
    _, _, out, _ = made
    coco = COCO(str(out / "annotations" / "instances_train.json"))
    assert coco.getCatIds(catNms=["Trouser"]) == [2]
    image_id = coco.getImgIds()[0]
    ann_ids = coco.getAnnIds(imgIds=[image_id], iscrowd=False)
    assert ann_ids
    name = coco.imgs[image_id]["file_name"]
    _, ade_mask = _read(out / "ADEChallengeData2016" / "annotations" / "training" / name)
    for ann in coco.loadAnns(ann_ids):
        instance = coco.annToMask(ann)
        assert instance.shape == (CANVAS, CANVAS) and instance.sum() == ann["area"]
        assert (ade_mask[instance.astype(bool)] == ann["category_id"] + 1).all()


def test_the_ade_layout_reads_as_a_segmentation_data_set(made):
    _, _, out, summaries = made
    pairs = read_ade20k(summaries["test"]["ade20k"], "test")
    assert read_ade20k(out, "test") == pairs  # the parent too, despite the COCO images/ folder beside it
    assert [image.name for image, _ in pairs] == [f"scene_{i:06d}.png" for i in range(10)]
    labels = load_labels(pairs[0][1], num_classes=11)
    assert labels.shape == (CANVAS, CANVAS) and (labels == 0).any()  # 0 = background after reduce_zero_label


def test_scene_i_does_not_depend_on_the_number_of_scenes_and_the_seed_matters(tmp_path):
    root = tmp_path / "fashion"
    root.mkdir()
    _write_fashion(root)
    runs = {(n, seed): tmp_path / f"out{n}-{seed}" for n, seed in ((3, 0), (5, 0), (3, 1))}
    for (n, seed), out in runs.items():
        make_scenes(root, out, "train", n, canvas=CANVAS, seed=seed)
    three, five, other = (runs[key] for key in ((3, 0), (5, 0), (3, 1)))
    assert _placements(five, "train")[:3] == _placements(three, "train")
    for i in range(3):
        for sub in ("images", "annotations"):
            name = f"ADEChallengeData2016/{sub}/training/scene_{i:06d}.png"
            assert (three / name).read_bytes() == (five / name).read_bytes()
    assert _placements(other, "train") != _placements(three, "train")
    image = "ADEChallengeData2016/images/training/scene_000000.png"
    assert (other / image).read_bytes() != (three / image).read_bytes()


def test_each_split_uses_its_own_garments(made):
    _, data, out, _ = made
    for split, other, folder in (("train", "test", "training"), ("test", "train", "validation")):
        for scene in _placements(out, split):
            _, written = _read(out / "ADEChallengeData2016" / "images" / folder / scene["file_name"])
            assert np.array_equal(written[:, :, 0], _recompose(scene["items"], data[split][0], CANVAS)[0])
            assert not np.array_equal(written[:, :, 0], _recompose(scene["items"], data[other][0], CANVAS)[0])


def test_without_occlusion_items_do_not_overlap(tmp_path):
    root = tmp_path / "fashion"
    root.mkdir()
    _write_fashion(root)
    make_scenes(root, tmp_path / "out", "test", 8, canvas=84, occlusion=False)
    for scene in _placements(tmp_path / "out", "test"):
        taken = np.zeros((84, 84), np.int64)
        for item in scene["items"]:
            taken[item["y"]:item["y"] + item["size"], item["x"]:item["x"] + item["size"]] += 1
        assert taken.max() == 1


def test_a_folder_made_with_other_settings_is_refused(tmp_path):
    root = tmp_path / "fashion"
    root.mkdir()
    _write_fashion(root)
    out = tmp_path / "out"
    make_scenes(root, out, "train", 4, canvas=CANVAS, seed=0)
    mask = out / "ADEChallengeData2016/annotations/training/scene_000001.png"
    before = mask.read_bytes()
    refused = re.escape(f"{out} holds train scenes made with other settings (seed: 0, asked 1)")
    with pytest.raises(UserError, match=refused):
        make_scenes(root, out, "train", 4, canvas=CANVAS, seed=1)
    with pytest.raises(UserError, match=rf"{re.escape(str(out))} .*num_scenes: 4, asked 5"):
        make_scenes(root, out, "train", 5, canvas=CANVAS, seed=0)
    assert mask.read_bytes() == before
    make_scenes(root, out, "train", 4, canvas=CANVAS, seed=0)  # the same settings: written again, identically
    assert mask.read_bytes() == before
    make_scenes(root, out, "test", 2, canvas=CANVAS, seed=7)  # the other split has its own settings
    manifest = json.loads((out / "scenes_manifest.json").read_text())
    assert (manifest["splits"]["train"]["seed"], manifest["splits"]["test"]["seed"]) == (0, 7)
    assert manifest["splits"]["train"]["fashion_root"] == str(root.resolve())


def test_an_interrupted_run_is_left_unfinished_and_a_rerun_cleans_up(tmp_path, monkeypatch):
    root = tmp_path / "fashion"
    root.mkdir()
    _write_fashion(root)
    out = tmp_path / "out"
    make_scenes(root, out, "train", 2, canvas=CANVAS)
    write_file, calls, limit = scenes._write_file, [], 5

    def failing(path, data):
        calls.append(path)
        if len(calls) == limit:
            raise KeyboardInterrupt
        write_file(path, data)

    monkeypatch.setattr(scenes, "_write_file", failing)
    with pytest.raises(KeyboardInterrupt):
        make_scenes(root, out, "train", 2, canvas=CANVAS)  # the same settings, interrupted
    assert "train" not in json.loads((out / "scenes_manifest.json").read_text())["splits"]
    calls.clear()
    limit = 20  # after 6 of 9 scenes
    with pytest.raises(KeyboardInterrupt):
        make_scenes(root, out, "train", 9, canvas=CANVAS, seed=5)  # unfinished, so other settings are allowed
    assert "train" not in json.loads((out / "scenes_manifest.json").read_text())["splits"]
    monkeypatch.undo()
    make_scenes(root, out, "train", 3, canvas=CANVAS, seed=5)
    for folder in ("ADEChallengeData2016/images/training", "ADEChallengeData2016/annotations/training",
                   "images/train"):
        assert sorted(p.name for p in (out / folder).iterdir()) == [f"scene_{i:06d}.png" for i in range(3)]
    assert json.loads((out / "scenes_manifest.json").read_text())["splits"]["train"]["num_scenes"] == 3


def test_mistakes_are_user_errors(tmp_path):
    root = tmp_path / "fashion"
    root.mkdir()
    _write_fashion(root)
    with pytest.raises(UserError, match="canvas=30: too small for garments of 35 px"):
        make_scenes(root, tmp_path / "out", "train", 2, canvas=30)
    with pytest.raises(UserError, match="split='val'"):
        make_scenes(root, tmp_path / "out", "val", 2)
    with pytest.raises(UserError, match="min_items=3, max_items=2"):
        make_scenes(root, tmp_path / "out", "train", 2, min_items=3, max_items=2)
    with pytest.raises(MissingFileError, match=re.escape(str(tmp_path / "nowhere"))):
        make_scenes(tmp_path / "nowhere", tmp_path / "out", "train", 2)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'file'}: is a file")):
        make_scenes(root, tmp_path / "file", "train", 2)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scenes_manifest.json").write_text("{")
    with pytest.raises(UserError, match="scenes_manifest.json: unreadable"):
        make_scenes(root, tmp_path / "bad", "train", 2)


def test_command_line_writes_both_splits(tmp_path, capsys):
    root = tmp_path / "fashion"
    root.mkdir()
    _write_fashion(root)
    parser = argparse.ArgumentParser()
    add_make_scenes(parser.add_subparsers(dest="action"))
    out = tmp_path / "out"
    args, extra = parser.parse_known_args(["make-scenes", "--fashion-root", str(root), "--out", str(out),
                                           "--train", "3", "--test", "2", "--canvas", "40", "--seed", "4"])
    assert args.run(args, extra) == 0
    printed = capsys.readouterr().out
    assert "train: 3 scenes" in printed and "test: 2 scenes" in printed
    manifest = json.loads((out / "scenes_manifest.json").read_text())["splits"]
    assert {split: (s["num_scenes"], s["canvas"], s["seed"]) for split, s in manifest.items()} == {
        "train": (3, 40, 4), "test": (2, 40, 4)}
    assert len(json.loads((out / "annotations" / "instances_val.json").read_text())["images"]) == 2
    defaults = parser.parse_args(["make-scenes", "--out", str(out)])
    assert (defaults.fashion_root, defaults.train, defaults.test, defaults.canvas, defaults.seed) == (
        str(DEBIAN_FASHION_MNIST), 2000, 500, 84, 0)
    args, extra = parser.parse_known_args(["make-scenes", "--out", str(out), "--train", "-1"])
    with pytest.raises(UserError, match="--train -1"):
        args.run(args, extra)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_scenes_agree_with_the_recomposition(tmp_path):
    for split, folder in (("train", "training"), ("test", "validation")):
        summary = make_scenes(DEBIAN_FASHION_MNIST, tmp_path, split, 4)
        garments, labels = load_fashion_mnist(DEBIAN_FASHION_MNIST, split)
        for scene in _placements(tmp_path, split):
            assert all(item["label"] == int(labels[item["garment"]]) for item in scene["items"])
            image, mask = _recompose(scene["items"], garments, 84)
            ade = tmp_path / "ADEChallengeData2016"
            _, written = _read(ade / "images" / folder / scene["file_name"])
            _, written_mask = _read(ade / "annotations" / folder / scene["file_name"])
            assert np.array_equal(written[:, :, 0], image) and np.array_equal(written_mask, mask)
        assert summary["annotations"] > 0
