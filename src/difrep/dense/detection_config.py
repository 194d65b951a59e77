"""Detection configuration (``difrep train`` with ``task: detection``): Mask R-CNN on one backbone block.

Defaults are the paper's COCO run (Figure 8: t = 75, b = 24, 10 epochs, batch 4) and, where the paper is
silent, the ViTDet recipe it follows: large-scale jitter (scale 0.1-2.0 of a 1024 crop), AdamW with weight
decay 0.1, 250 warm-up iterations, the learning rate divided by 10 at 88.9% and 96.3% of training, ViTDet's
heads (see :mod:`.maskrcnn`), 100 detections per image at evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..models import ModelConfig
from ..utils.config import config_from_dict as _from_dict
from ..utils.config import load_config as _load
from .maskrcnn import MaskRCNNConfig


@dataclass
class DetDataConfig:
    name: str = "coco"
    root: str = ""
    train_split: str = "train"
    test_split: str = "test"
    size: int = 1024  # the training crop, and the long side of evaluation images (the detector's min/max size)
    scale_range: list[float] = field(default_factory=lambda: [0.1, 2.0])  # large-scale jitter of the long side
    flip: bool = True
    filter_empty: bool = True  # train on images with at least one non-crowd object (all are evaluated)
    max_train: int | None = None  # the first N images only (quick runs)
    max_test: int | None = None
    check: bool = True
    workers: int | None = None


@dataclass
class DetFeatureConfig:
    timesteps: list[int] = field(default_factory=lambda: [75])
    blocks: list[int | str] = field(default_factory=lambda: [24])
    input_size: int = 1024  # the backbone's input for a data.size image (ADM-256's b = 24 then has stride 16)


@dataclass
class DetOptimConfig:
    name: str = "adamw"
    lr: float = 1e-4
    backbone_lr: float | None = None  # fine-tuning: the backbone's lr (default: lr)
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    batch_size: int = 4
    epochs: float = 10.0
    iterations: int | None = None  # overrides epochs
    warmup: int = 250
    warmup_factor: float = 0.001
    milestones: list[float] = field(default_factory=lambda: [0.889, 0.963])  # fractions of training: lr x gamma
    gamma: float = 0.1
    grad_accum: int = 1
    grad_clip: float | None = None


@dataclass
class DetRunConfig:
    out: str = "runs/detection"
    seed: int = 0
    precision: str = "fp32"
    finetune: bool = False
    log_every: int = 500  # iterations per period (one log row, one checkpoint)
    eval_every: int = 30_000  # iterations between evaluations (and at the end)
    draw: int = 4  # validation images drawn with their predicted boxes and masks at the end
    eval_batch: int | None = None  # images per evaluation forward, all of one size (None: optim.batch_size)
    tensorboard: bool = True
    wandb: bool = False
    progress: bool = True


@dataclass
class DetectionConfig:
    task: str = "detection"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DetDataConfig = field(default_factory=DetDataConfig)
    features: DetFeatureConfig = field(default_factory=DetFeatureConfig)
    head: MaskRCNNConfig = field(default_factory=MaskRCNNConfig)
    optim: DetOptimConfig = field(default_factory=DetOptimConfig)
    run: DetRunConfig = field(default_factory=DetRunConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_detection_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DetectionConfig:
    """A :class:`DetectionConfig` from a YAML file and ``section.option=value`` overrides."""
    return _load(path, overrides, DetectionConfig)


def detection_config_from_dict(data: dict[str, Any]) -> DetectionConfig:
    return _from_dict(data, DetectionConfig)
