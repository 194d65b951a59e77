"""Semantic segmentation on the training engine: UperNet on (frozen or fine-tuned) backbone features.

Every iteration is a pure function of (seed, iteration): its images come from a permutation seeded by
(seed, epoch), each image's random resize, crop, flip and colour distortion and its noise from seeds
of (seed, iteration, its position in the global batch). A run resumed from its last checkpoint
continues exactly, and w processes of batch B take the steps of one process of batch w x B (with
``head.norm=groupnorm``; BatchNorm statistics are per process unless converted to SyncBatchNorm, which
difrep does on GPUs). Evaluation counts every validation image once over all processes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..data import create_segmentation_dataset
from ..data.loader import ShardSampler, default_workers, mix_seeds
from ..data.seg_transforms import SegEvalTransform, SegTrainTransform
from ..engine import Engine, EngineSettings, read_checkpoint
from ..errors import UserError
from ..features.noise import image_seed
from ..utils.files import file_sha256
from ..utils.precision import autocast, precision_dtype
from .adapter import DenseFeatures
from .base import DenseTask
from .config import SegmentationConfig, segmentation_config_from_dict
from .inference import slide_inference, whole_inference
from .metrics import IGNORE_INDEX, SegmentationMetrics
from .upernet import UperNet

LOG_FIELDS = ("step", "loss", "loss_main", "loss_aux", "lr", "mIoU", "aAcc", "images_per_s", "seconds")


def _first(data: Dataset, n: int | None) -> Dataset:
    return data if n is None or n >= len(data) else Subset(data, range(n))  # type: ignore[arg-type]


def _collate_eval(batch: list[Any]) -> Any:
    return batch  # images of different sizes: one at a time


class SegmentationTask(DenseTask):
    """UperNet trained on the features of ``model`` at one noise step; the engine runs it."""

    log_fields = LOG_FIELDS
    backbone_prefix = "features.backbone."

    def __init__(self, cfg: SegmentationConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, f, h, o, r = cfg.data, cfg.features, cfg.head, cfg.optim, cfg.run
        precision_dtype(r.precision, "run.precision")
        if o.name != "adamw":
            raise UserError(f"optim.name={o.name!r}: segmentation trains with adamw")
        if o.iterations < 1 or r.log_every < 1 or r.eval_every < 1 or o.batch_size < 1:
            raise UserError("optim.iterations, optim.batch_size, run.log_every and run.eval_every must be positive")
        if len(f.timesteps) != 1:
            raise UserError(f"features.timesteps={f.timesteps}: dense tasks take one noise step")
        self.settings = EngineSettings(out=r.out, seed=r.seed, precision=r.precision, grad_accum=o.grad_accum,
                                       progress=r.progress, tensorboard=r.tensorboard, wandb=r.wandb)
        self.iterations = o.iterations
        self.num_periods = math.ceil(o.iterations / r.log_every)
        self.images_per_step = o.batch_size * self.world
        torch.manual_seed(r.seed)
        train = SegTrainTransform(d.crop, tuple(d.scale), tuple(d.ratio_range), d.cat_max_ratio,  # type: ignore[arg-type]
                                  0.5 if d.flip else 0.0, d.photometric)
        evaluate = SegEvalTransform(tuple(d.scale))  # type: ignore[arg-type]
        full_train = create_segmentation_dataset(d.name, d.root, d.train_split, train, evaluate, check=d.check)
        self.classes = list(full_train.classes)
        self.train_data = _first(full_train, d.max_train)
        self.test_data = _first(create_segmentation_dataset(d.name, d.test_root or d.root, d.test_split, train,
                                                            evaluate, check=d.check), d.max_test)
        self.model = cfg.model.build()
        if not r.finetune:
            self.model.freeze()
        features = DenseFeatures(self.model, f.timesteps[0], f.blocks, h.channels, f.input_size, f.feedback, r.finetune)
        needed = [*features.blocks, *(b for pair in (features.feedback.pairs if features.feedback else []) for b in pair)]
        self.model.prune_intermediate_layers(needed)
        self.net = UperNet(features, h.channels, len(self.classes), h.decoder_channels, h.aux_channels, h.dropout,
                           h.norm).to(self.device)
        if h.norm == "batchnorm":
            if self.device.type == "cuda" and self.world > 1:
                self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            elif o.batch_size == 1:
                raise UserError("optim.batch_size=1 with head.norm=batchnorm: the pyramid pooling's 1x1 branch cannot "
                                "take batch statistics of one image; use a batch of 2 or more, several GPUs "
                                "(SyncBatchNorm), or head.norm=groupnorm")
        self.module = self.net
        self._last_eval: dict[str, Any] = {}

    # engine hooks --------------------------------------------------------------------------------------
    def scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Linear warm-up from ``warmup_ratio`` over ``warmup`` iterations, on a poly decay to ``min_lr``."""
        o = self.cfg.optim

        def factor(step: int) -> float:
            poly = (1 - min(step, o.iterations) / o.iterations) ** o.power
            value = poly * (1 - o.min_lr / o.lr) + o.min_lr / o.lr
            if step < o.warmup:
                value *= 1 - (1 - step / o.warmup) * (1 - o.warmup_ratio)
            return value

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def _noise(self, seeds: list[int]) -> torch.Tensor | None:
        if not self.model.takes_timestep:
            return None
        shape = self.net.features.noise_shape()
        out = torch.empty(len(seeds), *shape)
        for i, seed in enumerate(seeds):
            torch.randn(*shape, generator=torch.Generator().manual_seed(seed), out=out[i])
        return out.to(self.device)

    def loss(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, masks, _ = batch
        n = images.shape[0]
        noise = self._noise([mix_seeds(self.cfg.run.seed, step, self.rank * n + i, 5) for i in range(n)])
        logits, aux = net(images.to(self.device), noise, with_aux=True)
        masks = masks.to(self.device)
        labelled = (masks != IGNORE_INDEX).sum().double()
        if self.world > 1:  # the mean over the global batch's labelled pixels, whichever process holds them
            dist.all_reduce(labelled)
        scale = self.world / labelled.clamp_min(1)
        main = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum") * scale
        aux_loss = F.cross_entropy(aux.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum") * scale
        loss = main + self.cfg.head.aux_weight * aux_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is {loss.item()}; lower optim.lr or use run.precision=fp32")
        return loss, {"loss": loss, "loss_main": main, "loss_aux": aux_loss}

    # evaluation ----------------------------------------------------------------------------------------
    def predict(self, image: torch.Tensor, index: int) -> torch.Tensor:
        """Class scores [K, h, w] of one evaluation image (on the task's device), slide or whole."""
        d, r = self.cfg.data, self.cfg.run
        shape = self.net.features.noise_shape()

        def score(windows: torch.Tensor, k: int) -> torch.Tensor:
            noise = None
            if self.model.takes_timestep:
                gen = torch.Generator().manual_seed(image_seed(r.seed, index, draw=k))
                noise = torch.randn(1, *shape, generator=gen).to(self.device)
            return self.net(windows, noise)

        if r.slide:
            return slide_inference(score, image, len(self.classes), d.crop, r.stride)
        return whole_inference(score, image, d.crop)

    def evaluate(self) -> dict[str, Any]:
        """mIoU and pixel accuracy over the validation split (predictions resized to each label's size)."""
        metrics = SegmentationMetrics(len(self.classes), self.device)
        sampler = ShardSampler(len(self.test_data), self.rank, self.world)
        workers = default_workers() if self.cfg.data.workers is None else self.cfg.data.workers
        loader = DataLoader(self.test_data, batch_size=1, sampler=sampler, collate_fn=_collate_eval, num_workers=workers)
        self.net.eval()
        amp = precision_dtype(self.cfg.run.precision, "run.precision")
        with torch.no_grad(), autocast(self.device, amp):
            for [(image, mask, index)] in tqdm(loader, desc="evaluate", disable=not (self.cfg.run.progress and self.rank == 0)):
                scores = self.predict(image.to(self.device), int(index))
                scores = F.interpolate(scores[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)[0]
                metrics.update(scores.argmax(0), mask.to(self.device))
        result = metrics.compute()
        self._last_eval = result
        return {"mIoU": result["mIoU"], "aAcc": result["aAcc"], "pixels": result["pixels"]}

    def finish(self, out: Path, history: list[dict[str, Any]]) -> dict[str, Any]:
        row = history[-1] if history else {}
        per_class = dict(zip(self.classes, self._last_eval.get("per_class_iou", [])))
        final = {**row, "parameters": self.trained_parameters(), "per_class_iou": per_class,
                 "checkpoint": str(out / "last.pt"), "checkpoint_sha256": file_sha256(out / "last.pt"),
                 "config": self.cfg.to_dict()}
        (out / "metrics.json").write_text(json.dumps(final, indent=2))
        if self.cfg.run.overlays:
            self.draw_overlays(out / "overlays.png", self.cfg.run.overlays)
        return final

    def draw_overlays(self, path: Path, count: int) -> Path:
        """Rows of (image, label, prediction) for the first validation images, classes in fixed colours."""
        palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
        palette[IGNORE_INDEX] = 0
        rows = []
        self.net.eval()
        with torch.no_grad():
            for i in range(min(count, len(self.test_data))):
                image, mask, index = self.test_data[i]
                scores = self.predict(image.to(self.device), int(index))
                pred = F.interpolate(scores[None], size=mask.shape[-2:], mode="bilinear",
                                     align_corners=False)[0].argmax(0).cpu()
                shown = F.interpolate(image[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)[0]
                pixels = ((shown.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
                rows.append(np.concatenate([pixels, palette[mask.numpy()], palette[pred.numpy()]], axis=1))
        width = max(r.shape[1] for r in rows)
        grid = np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows])
        Image.fromarray(grid).save(path)
        return path


def train_segmentation(cfg: SegmentationConfig) -> dict[str, Any]:
    """Run (or resume) a segmentation run; returns the final metrics, also in run.out/metrics.json."""
    return Engine(SegmentationTask(cfg)).run()


def evaluate_segmentation_checkpoint(path: str | Path, overrides: dict[str, Any] | None = None,
                                     state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild a segmentation run from its checkpoint and evaluate it (any number of processes);
    ``state``: the checkpoint as :func:`~difrep.engine.load_run_state` read it, not read again."""
    path = Path(path)
    state, data = read_checkpoint(path, overrides, state)
    task = SegmentationTask(segmentation_config_from_dict(data))
    task.load_trainable_state(state["weights"], path)
    return {**task.evaluate(), "per_class_iou": dict(zip(task.classes, task._last_eval["per_class_iou"])),
            "checkpoint": str(path), "checkpoint_sha256": file_sha256(path), "step": state["step"]}
