"""Semantic segmentation configuration (``difrep train`` with ``task: segmentation``).

Defaults are the paper's ADE20K run (Table 6: t = 90, b = 24, batch 2, 16k iterations, lr 2e-5) and,
where the paper is silent, the MAE segmentation recipe it builds on (AdamW with weight decay 0.05, poly
schedule after 1,500 warm-up iterations, crop 512, resize ratio 0.5-2.0 of 2048 x 512, UperNet with an
auxiliary FCN head of weight 0.4, slide inference with crop 512 and stride 341).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..models import ModelConfig
from ..utils.config import config_from_dict as _from_dict
from ..utils.config import load_config as _load


@dataclass
class SegDataConfig:
    name: str = "ade20k"
    root: str = ""
    test_root: str | None = None  # the evaluation split's folder, if not root (held-out scenes, say)
    train_split: str = "train"
    test_split: str = "test"
    crop: int = 512
    scale: list[int] = field(default_factory=lambda: [2048, 512])  # images are resized to fit in it, keeping ratio
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    photometric: bool = True
    flip: bool = True
    max_train: int | None = None  # the first N training images only (quick runs)
    max_test: int | None = None
    check: bool = True
    workers: int | None = None


@dataclass
class DenseFeatureConfig:
    timesteps: list[int] = field(default_factory=lambda: [90])
    blocks: list[int] = field(default_factory=lambda: [24])
    input_size: int = 256  # the crop is resized to this before the backbone (512 -> 256 for the 256 U-Net)
    feedback: str | None = None  # a DifFeed strategy (bottleneck, all, windowed, multi-scale): features of its 2nd pass


@dataclass
class UperNetConfig:
    name: str = "upernet"
    channels: int = 1024  # every backbone block is mapped to this width by a 1x1 conv
    decoder_channels: int = 1024
    aux_channels: int = 256
    aux_weight: float = 0.4
    dropout: float = 0.1
    norm: str = "batchnorm"  # or groupnorm (batch-independent; a per-process batch of 1 needs it on CPUs)


@dataclass
class SegOptimConfig:
    name: str = "adamw"
    lr: float = 2e-5
    backbone_lr: float | None = None  # fine-tuning: the backbone's lr (default: lr)
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    batch_size: int = 2
    iterations: int = 16_000
    warmup: int = 1_500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    grad_accum: int = 1


@dataclass
class SegRunConfig:
    out: str = "runs/segmentation"
    seed: int = 0
    precision: str = "fp32"
    finetune: bool = False
    log_every: int = 200  # iterations per period (one log row, one checkpoint)
    eval_every: int = 8000  # iterations between evaluations (and at the end)
    slide: bool = True
    stride: int = 341
    overlays: int = 4  # validation images drawn with their predicted masks at the end
    tensorboard: bool = True
    wandb: bool = False
    progress: bool = True


@dataclass
class SegmentationConfig:
    task: str = "segmentation"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    features: DenseFeatureConfig = field(default_factory=DenseFeatureConfig)
    head: UperNetConfig = field(default_factory=UperNetConfig)
    optim: SegOptimConfig = field(default_factory=SegOptimConfig)
    run: SegRunConfig = field(default_factory=SegRunConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_segmentation_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SegmentationConfig:
    """A :class:`SegmentationConfig` from a YAML file and ``section.option=value`` overrides."""
    return _load(path, overrides, SegmentationConfig)


def segmentation_config_from_dict(data: dict[str, Any]) -> SegmentationConfig:
    return _from_dict(data, SegmentationConfig)
