"""Head training configuration: the sections of ``difrep train`` (YAML, with ``section.option=value`` overrides)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..models import ModelConfig
from ..utils import config as _config


@dataclass
class DataConfig:
    name: str = "imagenet"
    root: str = ""
    train_split: str = "train"
    test_split: str = "test"
    per_class: int | None = None
    test_per_class: int | None = None  # images a class of the test split (default: per_class)
    subset_seed: int | None = None  # seed of the class-balanced subsets (default: run.seed)
    class_list: str | None = None
    on_error: str = "raise"
    check: bool = True
    workers: int | None = None
    flip: bool = True


@dataclass
class FeatureConfig:
    """Noise steps and blocks; with ``cache_train`` and ``cache_test`` (folders written by ``difrep extract``)
    the head trains on their features at ``pool`` instead of running the U-Net (fixed per-image noise, no flips)."""

    timesteps: list[int] = field(default_factory=lambda: [150])
    blocks: list[int] = field(default_factory=lambda: [24])
    cache_train: str | None = None
    cache_test: str | None = None
    pool: int | None = None


@dataclass
class HeadConfig:
    name: str = "attention"
    pool: int = 2
    dim: int = 1024
    depth: int = 2
    num_heads: int = 8
    norm: str = "layernorm"
    hidden: list[int] = field(default_factory=lambda: [1024])
    conv_channels: list[int] = field(default_factory=lambda: [512, 256])
    strategy: str = "bottleneck"
    max_tokens: int = 16  # the Attention tokenizer pools to at most max_tokens x max_tokens


@dataclass
class OptimConfig:
    name: str = "sgd"
    schedule: str = "step"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    grad_accum: int = 1
    epochs: int = 28
    step_epochs: int = 7
    gamma: float = 0.1
    eval_every: int = 7


@dataclass
class RunConfig:
    out: str = "runs/run"
    seed: int = 0
    precision: str = "fp32"
    finetune: bool = False
    tensorboard: bool = True
    wandb: bool = False
    progress: bool = True


@dataclass
class TrainConfig:
    task: str = "classification"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                schema: type = TrainConfig) -> Any:
    """A :class:`TrainConfig` (or ``schema``) from a YAML file and overrides; see :mod:`difrep.utils.config`."""
    return _config.load_config(path, overrides, schema)


def config_from_dict(data: dict[str, Any], schema: type = TrainConfig) -> Any:
    """A config from its ``to_dict()`` form (as saved in checkpoints), checked like a YAML file."""
    return _config.config_from_dict(data, schema)
