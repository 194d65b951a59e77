"""The reference classifier of :mod:`difrep.evaluation.samples`, trained on the engine like every other model
(its seeding, checkpoints and logs), so that the engine and the probes are the only training loops."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import mix_seeds
from ..engine import Engine, EngineSettings, Task
from ..errors import UserError
from ..evaluation.samples import ReferenceClassifier, to_grey


class ReferenceClassifierTask(Task):
    """:class:`ReferenceClassifier` on grey images held in memory, by cross-entropy with Adam at a constant lr.

    Periods are epochs, each a permutation of the images seeded by (seed, epoch), its last batch partial.
    Every process takes whole batches: the model is too small for sharding to pay, and identical batches
    keep the processes of a DDP run in step whatever the data's size."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int, lr: float, seed: int,
                 out: str | Path, progress: bool = False, device: torch.device | str | None = None) -> None:
        super().__init__()
        if device is not None:
            self.device = torch.device(device)
        self.images, self.labels = to_grey(images), labels.long()
        if len(self.images) != len(self.labels):
            raise UserError(f"{len(self.images)} images but {len(self.labels)} labels")
        if epochs < 1 or batch_size < 1:
            raise UserError(f"epochs={epochs}, batch_size={batch_size}: both must be positive")
        self.batch_size, self.lr, self.seed = batch_size, lr, seed
        self.num_periods = epochs
        self.settings = EngineSettings(out=str(out), seed=seed, progress=progress)
        torch.manual_seed(seed)
        self.classifier = ReferenceClassifier(1, int(self.labels.max()) + 1, self.images.shape[-1]).to(self.device)
        self.module = self.classifier

    def config(self) -> dict[str, Any]:
        return {"task": "reference_classifier", "images": len(self.images), "size": self.images.shape[-1],
                "num_classes": int(self.labels.max()) + 1, "epochs": self.num_periods, "batch_size": self.batch_size,
                "lr": self.lr, "seed": self.seed}

    def resume_key(self, config: dict[str, Any]) -> dict[str, Any]:
        """Everything but the epochs, which a resumed run may raise to train on."""
        return {k: v for k, v in config.items() if k != "epochs"}

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr)

    def scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)

    def batches(self, period: int, first_step: int) -> Iterable[torch.Tensor]:
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(mix_seeds(self.seed, period)))
        return order.split(self.batch_size)

    def loss(self, net: nn.Module, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = self.images[batch].to(self.device), self.labels[batch].to(self.device)
        loss = F.cross_entropy(net(x).float(), y)
        return loss, {"loss": loss}


def train_reference_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, batch_size: int = 128,
                               lr: float = 1e-3, seed: int = 0, progress: bool = False, out: str | Path | None = None,
                               device: torch.device | str | None = None) -> ReferenceClassifier:
    """Train :class:`ReferenceClassifier` on grey images [N, C, H, W] in [-1, 1] with their labels (Adam); returns it
    on the CPU, in eval mode.

    ``out``: the engine's folder (``last.pt``, ``metrics.csv``), from which a second call resumes; None trains in a
    temporary folder, deleted after. ``device``: None takes the engine's (CUDA when present)."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="difrep_reference_") as tmp:
            return train_reference_classifier(images, labels, epochs, batch_size, lr, seed, progress, tmp, device)
    task = ReferenceClassifierTask(images, labels, epochs, batch_size, lr, seed, out, progress, device)
    Engine(task).run()
    return task.classifier.cpu().eval()
