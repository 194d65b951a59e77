"""Segmentation data: the ADE20K layout, mask labels, the joint train/eval transforms and ``data check``."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from difrep.cli.main import main
from difrep.data import (
    ADE20K_CLASSES,
    IGNORE_INDEX,
    DatasetLayoutError,
    SegEvalTransform,
    SegmentationDataset,
    SegTrainTransform,
    create_dataset,
    create_segmentation_dataset,
    load_labels,
    load_mask,
    read_ade20k,
    reduce_zero_label,
)
from difrep.data.seg_transforms import _hsv_to_rgb, _resize_nearest, _rgb_to_hsv, fit_size
from difrep.errors import UserError

# a well-separated colour per class, so that a pixel's colour tells its class after resizing
PALETTE = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [30, 230, 230], [230, 30, 230]])


def write_pair(base, folder: str, stem: str, pixels: np.ndarray, values: np.ndarray, suffix: str = ".png"):
    """One sample in the SceneParsing layout: images/<folder>/<stem><suffix>, annotations/<folder>/<stem>.png."""
    image_path = base / "images" / folder / f"{stem}{suffix}"
    mask_path = base / "annotations" / folder / f"{stem}.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(image_path)
    Image.fromarray(values.astype(np.uint8)).save(mask_path)
    return image_path, mask_path


def make_ade(root, n_train: int = 3, n_val: int = 2, max_value: int = 150):
    """A tiny ADEChallengeData2016 copy: JPEG images, masks with values 0..max_value."""
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for folder, n in (("training", n_train), ("validation", n_val)):
        for i in reversed(range(n)):  # written out of order: the reader sorts
            pixels = rng.integers(0, 256, (24, 32, 3))
            values = rng.integers(0, max_value + 1, (24, 32))
            write_pair(base, folder, f"ADE_{folder}_{i:08d}", pixels, values, ".jpg")
    return base


def block_scene(height: int = 96, width: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random rectangles of classes 0..5 (and some ignored pixels); the image paints each class its colour."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), dtype=np.uint8)
    for _ in range(12):
        top, left = rng.integers(0, height - 2), rng.integers(0, width - 2)
        h, w = rng.integers(height // 6 + 1, height // 2 + 1), rng.integers(width // 6 + 1, width // 2 + 1)
        labels[top:top + h, left:left + w] = rng.integers(0, len(PALETTE))
    labels[:6, :10] = IGNORE_INDEX
    pixels = PALETTE[np.where(labels == IGNORE_INDEX, 0, labels)].astype(np.uint8)
    return pixels, labels


def decode_classes(image: torch.Tensor) -> np.ndarray:
    """The class whose palette colour is nearest to each pixel of a [3, H, W] tensor in [-1, 1]."""
    rgb = ((image.permute(1, 2, 0).numpy() + 1.0) * 127.5)[..., None, :]
    return np.abs(rgb - PALETTE).sum(-1).argmin(-1)


def interior(mask: np.ndarray) -> np.ndarray:
    """Labelled pixels whose 3x3 neighbourhood has one class: away from edges where bilinear mixes colours."""
    padded = np.pad(mask.astype(np.int64), 1, constant_values=-1)
    same = np.ones(mask.shape, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
    return same & (mask != IGNORE_INDEX)


# ---- the reader --------------------------------------------------------------------------------------


def test_reader_pairs_images_and_masks_sorted_by_stem(tmp_path):
    base = make_ade(tmp_path)
    pairs = read_ade20k(tmp_path, "train")
    assert [(i.name, m.name) for i, m in pairs] == [
        (f"ADE_training_{k:08d}.jpg", f"ADE_training_{k:08d}.png") for k in range(3)
    ]
    assert all(i.parent == base / "images" / "training" and m.parent == base / "annotations" / "training"
               for i, m in pairs)
    assert read_ade20k(base, "train") == pairs  # the archive folder itself
    assert read_ade20k(tmp_path, "val") == read_ade20k(tmp_path, "test")
    assert [m.name for _, m in read_ade20k(tmp_path, "test")] == ["ADE_validation_00000000.png",
                                                                  "ADE_validation_00000001.png"]


def test_reader_takes_png_images_in_the_same_layout(tmp_path):
    pixels, labels = block_scene(16, 16)
    write_pair(tmp_path, "training", "b", pixels, labels, ".png")
    write_pair(tmp_path, "training", "a", pixels, labels, ".jpeg")
    (tmp_path / "images" / "training" / "notes.txt").write_text("not an image")
    pairs = read_ade20k(tmp_path, "train")
    assert [(i.name, m.name) for i, m in pairs] == [("a.jpeg", "a.png"), ("b.png", "b.png")]


def test_reader_prefers_the_archive_folder_when_the_parent_has_images_too(tmp_path):
    base = make_ade(tmp_path)
    (tmp_path / "images" / "train").mkdir(parents=True)  # e.g. a COCO-style copy next to it
    assert [i.parent for i, _ in read_ade20k(tmp_path, "train")] == [base / "images" / "training"] * 3


def test_reader_names_what_is_missing(tmp_path):
    base = make_ade(tmp_path)
    lone_mask = base / "annotations" / "training" / "ADE_training_00000001.png"
    lone_mask.unlink()
    with pytest.raises(DatasetLayoutError, match=r"image .*ADE_training_00000001\.jpg has no mask"):
        read_ade20k(tmp_path, "train")
    (base / "images" / "validation" / "ADE_validation_00000000.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"mask .*ADE_validation_00000000\.png has no image"):
        read_ade20k(tmp_path, "val")
    with pytest.raises(DatasetLayoutError, match=r"no images/ folder .*Expected layout: ADEChallengeData2016"):
        read_ade20k(tmp_path / "elsewhere", "train")
    (base / "annotations" / "validation").rename(base / "annotations" / "val")
    with pytest.raises(DatasetLayoutError, match=r"missing folder .*annotations/validation.*Expected layout"):
        read_ade20k(tmp_path, "val")
    with pytest.raises(DatasetLayoutError, match=r"split='dev'"):
        read_ade20k(tmp_path, "dev")


def test_counts_are_checked_against_the_release(tmp_path):
    make_ade(tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"ADE20K \(SceneParsing\) at .*3 train images \(expected 20,210\)"):
        create_segmentation_dataset("ade20k", tmp_path, "train")
    with pytest.raises(DatasetLayoutError, match=r"2 test images \(expected 2,000\)"):
        create_segmentation_dataset("ade20k", tmp_path, "val")
    ds = create_segmentation_dataset("ade20k", tmp_path, "train", check=False)
    assert len(ds) == 3 and ds.num_classes == 150 and ds.classes == list(ADE20K_CLASSES)


def test_ade20k_class_names():
    assert len(ADE20K_CLASSES) == 150 == len(set(ADE20K_CLASSES))
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky") and ADE20K_CLASSES[-1] == "flag"
    assert ADE20K_CLASSES[44] == "chest of drawers"


def test_classification_and_segmentation_loaders_refuse_each_others_data(tmp_path):
    make_ade(tmp_path)
    with pytest.raises(UserError, match="'ade20k' is a segmentation data set.*create_segmentation_dataset"):
        create_dataset("ade20k", tmp_path, check=False)
    with pytest.raises(UserError, match="'cub200' is a classification data set.*create_dataset"):
        create_segmentation_dataset("cub200", tmp_path, check=False)
    with pytest.raises(UserError, match="unknown data set 'ade21k'"):
        create_segmentation_dataset("ade21k", tmp_path)


# ---- labels ------------------------------------------------------------------------------------------


def test_zero_is_ignored_and_the_rest_shift_down():
    values = np.array([[0, 1, 2], [150, 0, 7]], dtype=np.uint8)
    assert reduce_zero_label(values, 150, "m.png").tolist() == [[255, 0, 1], [149, 255, 6]]
    with pytest.raises(UserError, match=r"mask m\.png: value 151 is above the 150 classes"):
        reduce_zero_label(np.array([[3, 151]], dtype=np.uint8), 150, "m.png")


def test_masks_are_read_as_raw_values_and_bad_ones_named(tmp_path):
    palette_mask = Image.fromarray(np.array([[0, 3], [11, 1]], dtype=np.uint8), mode="P")
    palette_mask.putpalette([v for i in range(256) for v in (255 - i, i, 7)])  # colours unlike the indices
    palette_mask.save(tmp_path / "p.png")
    assert load_mask(tmp_path / "p.png").tolist() == [[0, 3], [11, 1]]
    assert load_labels(tmp_path / "p.png", 11).tolist() == [[255, 2], [10, 0]]
    with pytest.raises(UserError, match=r"mask .*p\.png: value 11 is above the 10 classes"):
        load_labels(tmp_path / "p.png", 10)
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match=r"unreadable mask .*rgb\.png: mode RGB"):
        load_mask(tmp_path / "rgb.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "p.png").read_bytes()[:30])
    with pytest.raises(UserError, match=r"unreadable mask .*cut\.png"):
        load_mask(tmp_path / "cut.png")


def test_dataset_returns_image_mask_and_index(tmp_path):
    pixels, labels = block_scene(20, 30)
    image_path, mask_path = write_pair(tmp_path, "validation", "x", pixels, np.where(labels == 255, 0, labels + 1))
    ds = SegmentationDataset([(image_path, mask_path)], 11, [str(c) for c in range(11)])
    image, mask, index = ds[0]
    assert index == 0 and image.dtype == torch.float32 and mask.dtype == torch.int64
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)
    assert mask.tolist() == labels.tolist()
    with pytest.raises(UserError, match="no train_transform"):
        ds[0, 1]
    too_few = SegmentationDataset([(image_path, mask_path)], 4, list("abcd"))
    with pytest.raises(UserError, match=r"mask .*x\.png: value \d+ is above the 4 classes"):
        too_few[0]
    Image.new("L", (5, 5)).save(mask_path)
    with pytest.raises(UserError, match=r"mask .*x\.png is 5x5 but image .*x\.png is 30x20"):
        ds[0]
    with pytest.raises(UserError, match="3 class names for num_classes=11"):
        SegmentationDataset([], 11, ["a", "b", "c"])


# ---- the train transform -----------------------------------------------------------------------------


@pytest.fixture()
def scene_dataset(tmp_path):
    pixels, labels = block_scene()
    pair = write_pair(tmp_path, "training", "s", pixels, np.where(labels == 255, 0, labels + 1))
    train = SegTrainTransform(64, scale=(160, 80), ratio_range=(0.5, 2.0), photometric=True)
    return SegmentationDataset([pair], 6, list("abcdef"), train_transform=train)


def test_the_same_seed_gives_the_same_sample_whatever_the_global_rngs(scene_dataset):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    states = torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    image, mask, index = scene_dataset[0, 7]
    assert torch.equal(torch.random.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    torch.manual_seed(2)
    random.seed(2)
    again, again_mask, _ = scene_dataset[0, 7]
    assert index == 0 and torch.equal(image, again) and torch.equal(mask, again_mask)
    others = [scene_dataset[0, seed] for seed in range(8, 12)]
    assert all(not torch.equal(image, other) for other, _, _ in others)


def test_image_and_mask_stay_aligned_through_rescale_crop_and_flip(tmp_path):
    pixels, labels = block_scene()
    image = Image.fromarray(pixels)
    transform = SegTrainTransform(64, scale=(160, 80), ratio_range=(0.5, 2.0), photometric=False)
    for seed in range(24):
        out_image, out_mask = transform(image, labels, torch.Generator().manual_seed(seed))
        assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
        mask = out_mask.numpy()
        inside = interior(mask)
        assert inside.sum() > 300, f"seed {seed}: too few labelled pixels to check"
        assert (decode_classes(out_image)[inside] == mask[inside]).all(), f"seed {seed}: image and mask disagree"
    unflipped = SegTrainTransform(64, scale=(128, 96), ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False)
    flipped = SegTrainTransform(64, scale=(128, 96), ratio_range=(1.0, 1.0), flip_prob=1.0, photometric=False)
    a_image, a_mask = unflipped(image, labels, torch.Generator().manual_seed(3))
    b_image, b_mask = flipped(image, labels, torch.Generator().manual_seed(3))
    assert torch.equal(b_mask, a_mask.flip(-1)) and torch.equal(b_image, a_image.flip(-1))
    assert not torch.equal(a_mask, b_mask)


@pytest.mark.parametrize("size", [(37, 53), (200, 130), (96, 128), (13, 300)])
def test_masks_are_resized_at_the_pixel_centres_images_use(size):
    """Nearest neighbour must sample where bilinear centres its pixels, else masks drift against images."""
    labels = np.random.default_rng(1).integers(0, 256, (96, 128)).astype(np.uint8)
    pil = np.asarray(Image.fromarray(labels).resize(size[::-1], Image.Resampling.NEAREST))

    def on_an_edge(size_in: int, size_out: int) -> np.ndarray:
        """Output pixels whose centre falls exactly between two input pixels: either neighbour is right."""
        return np.array([(2 * i + 1) * size_in % (2 * size_out) == 0 for i in range(size_out)])

    ties = on_an_edge(96, size[0])[:, None] | on_an_edge(128, size[1])[None, :]
    assert ties.mean() < 0.1
    assert np.array_equal(_resize_nearest(labels, *size)[~ties], pil[~ties])


def test_small_images_are_padded_with_grey_and_ignore(tmp_path):
    pixels, labels = block_scene(20, 30)
    transform = SegTrainTransform(48, scale=(30, 20), ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False)
    image, mask = transform(Image.fromarray(pixels), labels, torch.Generator().manual_seed(0))
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    assert torch.equal(image[:, :20, :30], torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)
    assert mask[:20, :30].tolist() == labels.tolist()
    assert (image[:, 20:, :] == 0).all() and (image[:, :, 30:] == 0).all()
    assert (mask[20:, :] == IGNORE_INDEX).all() and (mask[:, 30:] == IGNORE_INDEX).all()


def test_crops_dominated_by_one_class_are_redrawn():
    """Class 1 fills the right 40 of 100 columns: about half of the 50x50 crops have a class above 75%."""
    labels = np.zeros((100, 100), dtype=np.uint8)
    labels[:, 60:] = 1
    image = Image.fromarray(PALETTE[labels].astype(np.uint8))

    def balanced(cat_max_ratio: float) -> int:
        transform = SegTrainTransform(50, scale=(100, 100), ratio_range=(1.0, 1.0), cat_max_ratio=cat_max_ratio,
                                      flip_prob=0.0, photometric=False)
        count = 0
        for seed in range(60):
            _, mask = transform(image, labels, torch.Generator().manual_seed(seed))
            share = mask.float().mean().item()
            count += 0 < share and max(share, 1 - share) < 0.75
        return count

    assert balanced(0.75) >= 58
    assert balanced(1.0) <= 40


def test_a_crop_of_one_class_is_kept_when_no_better_one_exists():
    labels = np.full((80, 80), 2, dtype=np.uint8)
    transform = SegTrainTransform(32, scale=(80, 80), ratio_range=(1.0, 1.0), photometric=False)
    _, mask = transform(Image.fromarray(PALETTE[labels].astype(np.uint8)), labels, torch.Generator().manual_seed(0))
    assert mask.shape == (32, 32) and (mask == 2).all()


def test_photometric_distortion_changes_colours_only(tmp_path):
    pixels, labels = block_scene()
    image = Image.fromarray(pixels)
    plain = SegTrainTransform(64, scale=(160, 80), photometric=False)
    coloured = SegTrainTransform(64, scale=(160, 80), photometric=True)
    changed = 0
    for seed in range(6):
        a_image, a_mask = plain(image, labels, torch.Generator().manual_seed(seed))
        b_image, b_mask = coloured(image, labels, torch.Generator().manual_seed(seed))
        assert torch.equal(a_mask, b_mask)
        assert b_image.min() >= -1 and b_image.max() <= 1
        changed += not torch.allclose(a_image[:, b_mask != IGNORE_INDEX], b_image[:, b_mask != IGNORE_INDEX])
    assert changed >= 3


def test_hsv_round_trip_and_hue_shift():
    rgb = np.random.default_rng(0).uniform(0, 255, (50, 3))
    assert np.allclose(_hsv_to_rgb(*_rgb_to_hsv(rgb)), rgb, atol=1e-6)
    hue, saturation, value = _rgb_to_hsv(np.array([[255.0, 0.0, 0.0], [128.0, 128.0, 128.0]]))
    assert hue.tolist() == [0.0, 0.0] and saturation.tolist() == [1.0, 0.0] and value.tolist() == [255.0, 128.0]
    assert np.allclose(_hsv_to_rgb(hue + 120.0, saturation, value), [[0, 255, 0], [128, 128, 128]])


def test_bad_transform_options_are_named():
    with pytest.raises(UserError, match="crop_size=0"):
        SegTrainTransform(0)
    with pytest.raises(UserError, match=r"ratio_range=\(2.0, 0.5\)"):
        SegTrainTransform(64, ratio_range=(2.0, 0.5))
    with pytest.raises(UserError, match="flip_prob=1.5"):
        SegTrainTransform(64, flip_prob=1.5)


# ---- the eval transform ------------------------------------------------------------------------------


def test_eval_resizes_the_image_to_fit_the_scale_and_keeps_the_mask():
    assert fit_size(400, 600, (2048, 512)) == (512, 768)  # the short side limits
    assert fit_size(600, 400, (2048, 512)) == (768, 512)
    assert fit_size(500, 3000, (2048, 512)) == (341, 2048)  # the long side limits
    labels = np.random.default_rng(0).integers(0, 150, (400, 600)).astype(np.uint8)
    pixels = np.empty((400, 600, 3), dtype=np.uint8)
    pixels[:] = (10, 120, 250)
    image, mask = SegEvalTransform((2048, 512))(Image.fromarray(pixels), labels)
    assert image.shape == (3, 512, 768) and mask.shape == (400, 600)
    assert mask.dtype == torch.int64 and mask.tolist() == labels.tolist()
    expected = torch.tensor([10, 120, 250]) / 127.5 - 1
    assert torch.allclose(image, expected[:, None, None].expand(3, 512, 768), atol=1e-6)


def test_eval_transform_in_the_dataset(tmp_path):
    pixels, labels = block_scene(40, 60)
    pair = write_pair(tmp_path, "validation", "e", pixels, np.where(labels == 255, 0, labels + 1))
    ds = SegmentationDataset([pair], 6, list("abcdef"), eval_transform=SegEvalTransform((120, 80)))
    image, mask, index = ds[0]
    assert image.shape == (3, 80, 120) and mask.tolist() == labels.tolist() and index == 0


# ---- difrep data check -------------------------------------------------------------------------------


def test_data_check_reports_segmentation_counts(tmp_path, capsys):
    make_ade(tmp_path)
    assert main(["data", "check", "ade20k", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "ADE20K (SceneParsing)" in out and out.count("MISMATCH") == 2
    assert "train         150          3     20,210  MISMATCH" in out
    assert "test          150          2      2,000  MISMATCH" in out


def test_data_check_scenes_without_counts_is_ok_and_verify_finds_bad_masks(tmp_path, capsys):
    pixels, labels = block_scene(16, 16)
    for folder in ("training", "validation"):
        for stem in ("a", "b"):
            write_pair(tmp_path, folder, stem, pixels, np.where(labels == 255, 0, labels + 1))
    assert main(["data", "check", "scenes", str(tmp_path), "--verify", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "train          11          2          -  ok" in out and "test           11          2          -  ok" in out
    assert "decoded 2 of 2 images and 2 of 2 masks" in out
    bad_value = tmp_path / "annotations" / "training" / "a.png"
    Image.fromarray(np.full((16, 16), 12, dtype=np.uint8)).save(bad_value)
    cut = tmp_path / "annotations" / "training" / "b.png"
    cut.write_bytes(cut.read_bytes()[:40])
    assert main(["data", "check", "scenes", str(tmp_path), "--splits", "train", "--verify", "--workers", "0"]) == 1
    out = capsys.readouterr().out
    assert f"mask {bad_value}: value 12 is above the 11 classes" in out
    assert f"unreadable mask {cut}" in out and "decoded 2 of 2 images and 0 of 2 masks" in out
