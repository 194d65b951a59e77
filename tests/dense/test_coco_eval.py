"""Box and mask AP against cases with a known answer: perfect predictions, a shifted box, crowd, empty images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data.test_coco import H, W, write_coco

from difrep.data import create_detection_dataset
from difrep.dense import coco_evaluate, to_coco_results


@pytest.fixture()
def ds(tmp_path):
    write_coco(tmp_path)
    return create_detection_dataset("coco", tmp_path, "test", check=False)


def _as_prediction(target, scores=None) -> dict:
    n = len(target["labels"])
    return {"boxes": target["boxes"].clone(), "labels": target["labels"].clone(),
            "scores": torch.ones(n) if scores is None else torch.tensor(scores),
            "masks": target["masks"][:, None].float()}


def _results(ds, predictions):
    return {ds.image_ids[i]: to_coco_results(p, ds.image_ids[i], ds.category_id) for i, p in predictions.items()}


def test_ground_truth_as_predictions_scores_ap_100(ds):
    predictions = {i: _as_prediction(ds[i][1]) for i in range(len(ds))}
    metrics = coco_evaluate(ds.coco, _results(ds, predictions))
    for kind in ("bbox", "segm"):
        assert metrics[f"{kind}_AP"] == pytest.approx(100) and metrics[f"{kind}_AP50"] == pytest.approx(100), metrics
    assert metrics["images"] == 3 and metrics["bbox_APl"] is None, "no large object: COCOeval's -1 becomes None"
    assert "Average Precision" in metrics["bbox_summary"]


def test_a_box_at_iou_0_72_passes_5_of_10_thresholds(ds):
    target = ds[1][1]  # one object, 20 x 25
    shifted = _as_prediction(target)
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    # shifting by d along x gives IoU (w - d) / (w + d) = 0.72 for d = 0.28 w / 1.72
    d = 0.28 * (x1 - x0) / 1.72
    shifted["boxes"] += torch.tensor([d, 0.0, d, 0.0])
    metrics = coco_evaluate(ds.coco, _results(ds, {1: shifted}))
    assert metrics["bbox_AP50"] == pytest.approx(100) and metrics["bbox_AP75"] == pytest.approx(0)
    assert metrics["bbox_AP"] == pytest.approx(50, abs=0.5), "IoU 0.72 passes 0.50..0.70, 5 of 10 thresholds"
    assert metrics["segm_AP"] == pytest.approx(100), "the mask was not moved"


def test_crowd_regions_are_ignored_and_empty_images_count(ds):
    perfect = {i: _as_prediction(ds[i][1]) for i in range(len(ds))}
    crowd = ds.coco.anns[3]
    x, y, w, h = crowd["bbox"]
    on_crowd = _as_prediction(ds[0][1])
    on_crowd["boxes"] = torch.cat([on_crowd["boxes"], torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)])
    on_crowd["labels"] = torch.cat([on_crowd["labels"], torch.tensor([2])])
    on_crowd["scores"] = torch.tensor([1.0, 1.0, 0.99])
    crowd_mask = torch.from_numpy(ds.coco.annToMask(crowd)).float()[None, None]
    on_crowd["masks"] = torch.cat([on_crowd["masks"], crowd_mask])
    metrics = coco_evaluate(ds.coco, _results(ds, {**perfect, 0: on_crowd}))
    assert metrics["bbox_AP"] == pytest.approx(100) and metrics["segm_AP"] == pytest.approx(100), \
        "a detection on a crowd region is neither a hit nor a miss"
    ghost = {"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([1.0]),
             "masks": torch.zeros(1, 1, H, W)}
    ghost["masks"][0, 0, 1:20, 1:20] = 1
    below = {i: {**p, "scores": p["scores"] * 0.9} for i, p in perfect.items()}
    metrics = coco_evaluate(ds.coco, _results(ds, {**below, 2: ghost}))
    assert metrics["bbox_AP"] < 90 and metrics["segm_AP"] < 90, "a detection on an empty image, ranked first, is a miss"
    missing = coco_evaluate(ds.coco, _results(ds, {0: perfect[0], 2: perfect[2]}))
    assert missing["images"] == 2, "only the images evaluated count"
    nothing = coco_evaluate(ds.coco, {image_id: [] for image_id in ds.image_ids})
    assert nothing["bbox_AP"] == 0 and nothing["segm_AP"] == 0


def test_masks_are_thresholded_at_one_half(ds):
    target = ds[1][1]
    soft = _as_prediction(target)
    soft["masks"] = soft["masks"] * 0.6 + 0.3 * (1 - soft["masks"])  # inside 0.6, outside 0.3
    [entry] = to_coco_results(soft, ds.image_ids[1], ds.category_id)
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode({"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"]})
    np.testing.assert_array_equal(decoded, target["masks"][0].numpy())
    assert entry["category_id"] == 7 and entry["bbox"] == [30.0, 5.0, 20.0, 25.0], "xywh, the COCO id"
