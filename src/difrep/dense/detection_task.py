"""Detection and instance segmentation on the training engine: Mask R-CNN on one backbone block.

As for segmentation, every iteration is a pure function of (seed, iteration): its images, their jitter,
flip and noise, and the RPN's and RoI heads' samples come from seeds of (seed, iteration, position in the
global batch). A resumed run continues exactly; w processes of batch B take the steps of one of batch
w x B up to the losses' per-process normalisation (torchvision averages the mask loss over each process's
positive RoIs). Evaluation runs batches of images of one size (``run.eval_batch``), which give what each
image gives alone, each image once over all processes, and scores box and mask AP with COCOeval on rank 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import create_detection_dataset
from ..data.coco import CocoDetection, LargeScaleJitter
from ..data.loader import ShardSampler, default_workers, mix_seeds
from ..engine import Engine, EngineSettings, read_checkpoint
from ..errors import UserError
from ..features.noise import image_seed
from ..utils.files import file_sha256
from ..utils.precision import autocast, precision_dtype
from .base import DenseTask
from .coco_eval import coco_evaluate, gather_results, to_coco_results
from .detection_config import DetectionConfig, detection_config_from_dict
from .maskrcnn import build_mask_rcnn, set_seeds
from .pyramid import DetectionBackbone

LOSSES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
LOG_FIELDS = ("step", "loss", *LOSSES, "lr", "bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50", "images_per_s",
              "seconds")


def _collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], list[int]]:
    images, targets, indices = zip(*batch)
    return list(images), list(targets), list(indices)


def _first(data: CocoDetection, n: int | None) -> CocoDetection:
    if n is not None:
        data.image_ids = data.image_ids[:n]
    return data


class DetectionTask(DenseTask):
    """Mask R-CNN trained on the pyramid of one block of ``model`` at one noise step; the engine runs it."""

    log_fields = LOG_FIELDS
    backbone_prefix = "backbone.backbone."
    schedule_options = ("iterations", "epochs")
    collate = staticmethod(_collate)

    def __init__(self, cfg: DetectionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, f, o, r = cfg.data, cfg.features, cfg.optim, cfg.run
        precision_dtype(r.precision, "run.precision")
        if o.name != "adamw":
            raise UserError(f"optim.name={o.name!r}: detection trains with adamw")
        if o.batch_size < 1 or r.log_every < 1 or r.eval_every < 1 or (r.eval_batch is not None and r.eval_batch < 1):
            raise UserError("optim.batch_size, run.log_every, run.eval_every and run.eval_batch must be positive")
        if len(f.timesteps) != 1 or len(f.blocks) != 1:
            raise UserError(f"features.timesteps={f.timesteps}, features.blocks={f.blocks}: detection takes one "
                            "noise step and one block (the pyramid is built from it)")
        torch.manual_seed(r.seed)
        jitter = LargeScaleJitter(d.size, tuple(d.scale_range), 0.5 if d.flip else 0.0)  # type: ignore[arg-type]
        self.train_data = _first(create_detection_dataset(d.name, d.root, d.train_split, jitter,
                                                          keep_empty=not d.filter_empty, check=d.check), d.max_train)
        self.test_data = _first(create_detection_dataset(d.name, d.root, d.test_split, check=d.check), d.max_test)
        if self.train_data.classes != self.test_data.classes:
            raise UserError(f"data.root={d.root}: the {d.train_split} and {d.test_split} splits have other categories")
        self.classes = self.train_data.classes
        self.images_per_step = o.batch_size * self.world
        self.iterations = o.iterations or math.ceil(o.epochs * len(self.train_data) / self.images_per_step)
        if self.iterations < 1:
            raise UserError(f"optim.iterations={o.iterations}, optim.epochs={o.epochs}: train at least one step")
        self.num_periods = math.ceil(self.iterations / r.log_every)
        self.settings = EngineSettings(out=r.out, seed=r.seed, precision=r.precision, grad_accum=o.grad_accum,
                                       grad_clip=o.grad_clip, progress=r.progress, tensorboard=r.tensorboard,
                                       wandb=r.wandb)
        self.model = cfg.model.build()
        if not r.finetune:
            self.model.freeze()
        backbone = DetectionBackbone(self.model, f.timesteps[0], f.blocks[0], f.input_size, d.size,
                                     cfg.head.out_channels, cfg.head.channels, r.finetune)
        self.model.prune_intermediate_layers([backbone.block])
        self.net = build_mask_rcnn(backbone, len(self.classes), cfg.head).to(self.device)
        self.module = self.net
        self._last_eval: dict[str, Any] = {}

    # engine hooks --------------------------------------------------------------------------------------
    def scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Linear warm-up from ``warmup_factor``, then x ``gamma`` at each milestone (a fraction of training)."""
        o = self.cfg.optim
        steps = [round(m * self.iterations) for m in o.milestones]

        def factor(step: int) -> float:
            value = o.gamma ** sum(step >= s for s in steps)
            if step < o.warmup:
                value *= o.warmup_factor + (1 - o.warmup_factor) * step / o.warmup
            return value

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def loss(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, targets, _ = batch
        n = len(images)
        set_seeds(self.net, [mix_seeds(self.cfg.run.seed, step, self.rank * n + i, 5) for i in range(n)])
        losses = net([image.to(self.device) for image in images],
                     [{k: v.to(self.device) for k, v in target.items()} for target in targets])
        loss = sum(losses[k].float() for k in LOSSES)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is {loss.item()}; lower optim.lr or use run.precision=fp32")
        return loss, {"loss": loss, **{k: losses[k].detach().float() for k in LOSSES}}

    # evaluation ----------------------------------------------------------------------------------------
    def predict_batch(self, images: list[torch.Tensor], indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """Detections of images [3, H, W] in [0, 1] at their own sizes, in one forward: boxes, labels, scores,
        masks. Each image's noise comes from its own seed, so images of one size give what each gives alone."""
        self.net.eval()
        set_seeds(self.net, [image_seed(self.cfg.run.seed, index) for index in indices])
        amp = precision_dtype(self.cfg.run.precision, "run.precision")
        with torch.no_grad(), autocast(self.device, amp):
            return self.net([image.to(self.device) for image in images])

    def predict(self, image: torch.Tensor, index: int) -> dict[str, torch.Tensor]:
        """Detections of one image [3, H, W] in [0, 1] at its own size."""
        return self.predict_batch([image], [index])[0]

    def eval_batches(self) -> list[list[int]]:
        """This process's share of the evaluation split (each image once over all processes) in batches of
        ``run.eval_batch`` images of one stored size: the detector pads a batch to its largest image, and the
        backbone's noise is drawn at the padded size, so an image among larger ones would see other features."""
        size = self.cfg.run.eval_batch or self.cfg.optim.batch_size
        by_size: dict[tuple[int, int], list[int]] = {}
        for index in ShardSampler(len(self.test_data), self.rank, self.world):
            info = self.test_data.coco.imgs[self.test_data.image_ids[index]]
            by_size.setdefault((int(info["height"]), int(info["width"])), []).append(index)
        return [group[i : i + size] for group in by_size.values() for i in range(0, len(group), size)]

    def evaluate(self) -> dict[str, Any]:
        """Box and mask AP over the evaluation split (each image once, over every process)."""
        workers = default_workers() if self.cfg.data.workers is None else self.cfg.data.workers
        loader = DataLoader(self.test_data, batch_sampler=self.eval_batches(), collate_fn=_collate, num_workers=workers)
        results: dict[int, list[dict[str, Any]]] = {}
        for images, _, indices in tqdm(loader, desc="evaluate", disable=not (self.cfg.run.progress and self.rank == 0)):
            for index, found in zip(indices, self.predict_batch(images, indices)):
                image_id = self.test_data.image_ids[index]
                results[image_id] = to_coco_results(found, image_id, self.test_data.category_id)
        results = gather_results(results)
        metrics = [coco_evaluate(self.test_data.coco, results) if self.rank == 0 else None]
        if self.world > 1:
            dist.broadcast_object_list(metrics, src=0)
        self._last_eval = metrics[0]  # type: ignore[assignment]
        return {k: v for k, v in self._last_eval.items() if not k.endswith("_summary")}

    def finish(self, out: Path, history: list[dict[str, Any]]) -> dict[str, Any]:
        row = history[-1] if history else {}
        final = {**row, "parameters": self.trained_parameters(), "checkpoint": str(out / "last.pt"),
                 "checkpoint_sha256": file_sha256(out / "last.pt"), "config": self.cfg.to_dict()}
        (out / "metrics.json").write_text(json.dumps(final, indent=2))
        summaries = [self._last_eval.get(f"{k}_summary", "") for k in ("bbox", "segm")]
        if any(summaries):
            (out / "coco_eval.txt").write_text(f"bbox\n{summaries[0]}\nsegm\n{summaries[1]}")
        if self.cfg.run.draw:
            self.draw_predictions(out / "predictions.png", self.cfg.run.draw)
        return final

    def draw_predictions(self, path: Path, count: int, min_score: float = 0.5) -> Path:
        """The first validation images with their detections above ``min_score``: masks, boxes, class names."""
        from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, save_image

        panels = []
        for i in range(min(count, len(self.test_data))):
            image, _, index = self.test_data[i]
            found = {k: v.cpu() for k, v in self.predict(image, index).items()}
            keep = found["scores"] >= min_score
            scale = max(1, math.ceil(256 / max(image.shape[-2:])))  # small scenes drawn large enough to read
            pixels = (image * 255).round().to(torch.uint8)
            pixels = pixels.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            masks = found["masks"][keep, 0].repeat_interleave(scale, 1).repeat_interleave(scale, 2) > 0.5
            if len(masks):
                pixels = draw_segmentation_masks(pixels, masks, alpha=0.45)
            names = [f"{self.classes[int(label) - 1]} {float(s):.2f}"
                     for label, s in zip(found["labels"][keep], found["scores"][keep])]
            pixels = draw_bounding_boxes(pixels, found["boxes"][keep] * scale, names, colors="yellow")
            panels.append(pixels.float() / 255)
        size = max(max(p.shape[-2:]) for p in panels)
        padded = [torch.nn.functional.pad(p, (0, size - p.shape[-1], 0, size - p.shape[-2])) for p in panels]
        save_image(padded, path, nrow=len(padded), padding=2)
        return path


def train_detection(cfg: DetectionConfig) -> dict[str, Any]:
    """Run (or resume) a detection run; returns the final metrics, also in run.out/metrics.json."""
    return Engine(DetectionTask(cfg)).run()


def evaluate_detection_checkpoint(path: str | Path, overrides: dict[str, Any] | None = None,
                                  state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild a detection run from its checkpoint and evaluate it (any number of processes);
    ``state``: the checkpoint as :func:`~difrep.engine.load_run_state` read it, not read again."""
    path = Path(path)
    state, data = read_checkpoint(path, overrides, state)
    task = DetectionTask(detection_config_from_dict(data))
    task.load_trainable_state(state["weights"], path)
    return {**task.evaluate(), "checkpoint": str(path), "checkpoint_sha256": file_sha256(path), "step": state["step"]}
