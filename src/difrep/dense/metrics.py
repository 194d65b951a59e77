"""Semantic segmentation metrics over a whole data set: mean IoU, per-class IoU, pixel accuracy.

One confusion matrix is accumulated over every pixel of every image (pixels labelled ``ignore_index``
do not count) and summed over processes, then IoU_c = TP / (TP + FP + FN) per class. A class absent
from both the labels and the predictions of the whole data set has no IoU and is left out of the mean,
as mmsegmentation does; the mean is over the data set, not per image.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..data.segmentation import IGNORE_INDEX


class SegmentationMetrics:
    """Accumulate predictions (class maps) against labels; :meth:`compute` gives mIoU, aAcc, per-class IoU."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = IGNORE_INDEX) -> None:
        # imported here: torchmetrics imports transformers when it is installed, which would slow every command
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.num_classes = num_classes
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, sync_on_compute=False,
                                                   validate_args=False).to(device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred`` and ``target``: class indices of the same shape ([H, W] or [N, H, W])."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
        self.confusion.update(pred.flatten(), target.flatten())

    def matrix(self) -> torch.Tensor:
        """The confusion matrix [true, predicted], summed over every process."""
        m = self.confusion.confmat.clone().double()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(m)
        return m

    def compute(self) -> dict[str, object]:
        m = self.matrix()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        present = union > 0
        total = m.sum()
        return {
            "mIoU": 100 * iou[present].mean().item() if present.any() else float("nan"),
            "aAcc": 100 * (tp.sum() / total).item() if total > 0 else float("nan"),
            "per_class_iou": [100 * v for v in iou.tolist()],
            "pixels": int(total.item()),
        }
