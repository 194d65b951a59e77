"""Box and mask AP with pycocotools' ``COCOeval``, over every process's predictions, each image once.

Predictions become COCO results: boxes xywh, the category id of each label, masks thresholded at 0.5
and RLE-encoded. Crowd regions, images without objects and the area ranges are COCOeval's own
business; sizes with no ground-truth object get AP None (COCOeval's -1).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_coco_results(prediction: dict[str, torch.Tensor], image_id: int, category_id: Callable[[int], int],
                    mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """One image's detections (torchvision's output: boxes xyxy, labels, scores, masks [N, 1, H, W]) as COCO
    result entries."""
    from pycocotools import mask as mask_utils

    boxes = prediction["boxes"].detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
    labels, scores = prediction["labels"].tolist(), prediction["scores"].detach().float().cpu().tolist()
    rles: list[Any] = [None] * len(labels)
    if "masks" in prediction:
        binary = (prediction["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        rles = [mask_utils.encode(np.asfortranarray(m)) for m in binary]
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
    out = []
    for box, label, score, rle in zip(xywh, labels, scores, rles):
        entry = {"image_id": int(image_id), "category_id": category_id(int(label)), "bbox": box, "score": score}
        if rle is not None:
            entry["segmentation"] = rle
        out.append(entry)
    return out


def gather_results(results: dict[int, list[dict[str, Any]]]) -> dict[int, list[dict[str, Any]]]:
    """Every process's results by image id, merged on every process; an image seen twice counts once."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return results
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, results)
    merged: dict[int, list[dict[str, Any]]] = {}
    for part in parts:
        for image_id, entries in part.items():
            merged.setdefault(image_id, entries)
    return merged


def coco_evaluate(coco_gt: Any, results: dict[int, list[dict[str, Any]]], iou_types: Sequence[str] = IOU_TYPES
                  ) -> dict[str, Any]:
    """AP, AP50, AP75, APs, APm, APl (in %) per IoU type over the images in ``results`` (those evaluated,
    with or without detections), and COCOeval's printed summary."""
    from pycocotools.cocoeval import COCOeval

    image_ids = sorted(results)
    entries = [e for i in image_ids for e in results[i]]
    out: dict[str, Any] = {"images": len(image_ids)}
    for iou_type in iou_types:
        usable = [e for e in entries if iou_type == "bbox" or "segmentation" in e]
        if not usable or not image_ids:
            out.update({f"{iou_type}_{name}": 0.0 for name in STAT_NAMES})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            detections = coco_gt.loadRes(usable)
            evaluator = COCOeval(coco_gt, detections, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            evaluator.summarize()
        for name, value in zip(STAT_NAMES, evaluator.stats[:6]):
            out[f"{iou_type}_{name}"] = None if value < 0 else float(value) * 100
        out[f"{iou_type}_summary"] = summary.getvalue()
    return out
