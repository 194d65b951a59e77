"""Segmentation metrics against hand-computed cases, and slide inference against whole-image inference."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from difrep.dense import IGNORE_INDEX, SegmentationMetrics, slide_inference


def test_miou_of_a_hand_computed_confusion_matrix():
    # image 1: labels [0 0 1 1] predicted [0 1 1 1]; image 2: labels [2 2 255 0] predicted [2 0 1 0]
    metrics = SegmentationMetrics(4)
    metrics.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 0], [1, 1]]))
    metrics.update(torch.tensor([[2, 0], [1, 0]]), torch.tensor([[2, 2], [IGNORE_INDEX, 0]]))
    out = metrics.compute()
    # class 0: TP 2, FP 1 (a 2 predicted 0), FN 1 (a 0 predicted 1) -> 2/4; class 1: TP 2, FP 1, FN 0 -> 2/3;
    # class 2: TP 1, FN 1 -> 1/2; class 3: absent from labels and predictions -> not counted
    assert out["per_class_iou"][:3] == pytest.approx([50.0, 200 / 3, 50.0])
    assert math.isnan(out["per_class_iou"][3])
    assert out["mIoU"] == pytest.approx((50 + 200 / 3 + 50) / 3)
    assert out["aAcc"] == pytest.approx(100 * 5 / 7) and out["pixels"] == 7, "the ignored pixel does not count"


def test_perfect_prediction_is_one_and_matches_torchmetrics_when_every_class_occurs():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 16, 16), generator=gen)
    metrics = SegmentationMetrics(5)
    metrics.update(target, target)
    assert metrics.compute()["mIoU"] == pytest.approx(100.0)
    pred = torch.randint(0, 5, (3, 16, 16), generator=gen)
    target[0, :2] = IGNORE_INDEX
    ours = SegmentationMetrics(5)
    ours.update(pred, target)
    reference = MulticlassJaccardIndex(5, average="macro", ignore_index=IGNORE_INDEX)
    assert ours.compute()["mIoU"] == pytest.approx(100 * reference(pred, target).item(), rel=1e-6)


def test_a_prediction_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        SegmentationMetrics(3).update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long))


def _position_scorer(num_classes: int):
    """Scores that depend on the pixel's position inside the window (so windows disagree) and on the image."""
    def score(windows: torch.Tensor, k: int) -> torch.Tensor:
        n, _, h, w = windows.shape
        ramp = torch.linspace(0, 1, w)[None, None, None].expand(n, num_classes, h, w)
        return windows.mean(1, keepdim=True) * torch.arange(num_classes)[None, :, None, None] + ramp
    return score


def test_slide_equals_whole_when_one_window_covers_the_image():
    image = torch.randn(3, 20, 20)
    score = _position_scorer(3)
    torch.testing.assert_close(slide_inference(score, image, 3, crop=20, stride=13), score(image[None], 0)[0])


def test_slide_averages_every_pixel_over_the_windows_covering_it():
    image = torch.randn(3, 10, 16)
    crop, stride = 8, 5
    score = _position_scorer(2)
    out = slide_inference(score, image, 2, crop=crop, stride=stride)
    expected = torch.zeros(2, 10, 16)
    count = torch.zeros(10, 16)
    for y in (0, 2):  # rows: 0, then the last window moved back to end at 10
        for x in (0, 5, 8):  # columns: 0, 5, then 10 moved back to 8
            expected[:, y : y + crop, x : x + crop] += score(image[None, :, y : y + crop, x : x + crop], 0)[0]
            count[y : y + crop, x : x + crop] += 1
    assert count.min() >= 1
    torch.testing.assert_close(out, expected / count)


def test_an_image_smaller_than_the_window_is_padded_and_cropped_back():
    image = torch.randn(3, 6, 5)
    out = slide_inference(_position_scorer(2), image, 2, crop=8, stride=5)
    padded = torch.nn.functional.pad(image, (0, 3, 0, 2))
    torch.testing.assert_close(out, _position_scorer(2)(padded[None], 0)[0][:, :6, :5])
