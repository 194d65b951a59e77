"""Pretraining configuration: the same YAML + ``section.option=value`` overrides as head training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..models import ModelConfig


@dataclass
class PretrainData:
    name: str = "fashion-mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    split: str = "train"
    per_class: int | None = None
    flip: bool = True
    check: bool = True
    on_error: str = "raise"
    workers: int = 1


@dataclass
class PretrainOptim:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    batch_size: int = 128
    steps: int = 10000
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999


@dataclass
class PretrainRun:
    out: str = "runs/pretrain"
    seed: int = 0
    precision: str = "fp32"
    log_every: int = 50
    save_every: int = 1000
    export_dtype: str = "float32"
    progress: bool = True
    tensorboard: bool = False
    threads: int | None = None


@dataclass
class PretrainConfig:
    """An unconditional DDPM run: the ADM U-Net (flags), the images (labels unused), AdamW + EMA."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="adm"))
    data: PretrainData = field(default_factory=PretrainData)
    optim: PretrainOptim = field(default_factory=PretrainOptim)
    run: PretrainRun = field(default_factory=PretrainRun)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
