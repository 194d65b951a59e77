"""The study's configuration: one YAML file (``configs/study_fashion_mnist.yaml``) with these sections.

Every protocol is the paper's where the model allows it; each scaled setting says why in its comment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..data import DEBIAN_FASHION_MNIST


@dataclass
class StudyData:
    root: str = str(DEBIAN_FASHION_MNIST)
    train_per_class: int | None = None  # None: all 60,000 training images
    test_per_class: int | None = None  # None: all 10,000 test images
    val_fraction: float = 0.1  # held out of the training images to choose every setting


@dataclass
class StudyModel:
    checkpoint: str | None = None  # None: the shipped adm-fmnist-28 weights
    random_seed: int = 0  # the random-init control copy


@dataclass
class ProbeProtocol:
    """The paper's GD linear probe (the authors' scripts): SGD, 28 epochs, StepLR 7 x 0.1, raw features."""

    epochs: int = 28
    lr: float = 1e-2
    batch_size: int = 128  # 32 a GPU x 4 GPUs
    momentum: float = 0.9
    step_epochs: int = 7
    gamma: float = 0.1


@dataclass
class StudySweep:
    timesteps: list[int] = field(default_factory=lambda: [5, 25, 50, 100, 150, 250, 500])
    blocks: list[int] | None = None  # None: every block
    pool: int = 2  # the t x b grid (Figure 3): the paper's GD pooling
    pools: list[int] = field(default_factory=lambda: [1, 2, 4])  # over b at the chosen t (Figure 4)
    probe: ProbeProtocol = field(default_factory=ProbeProtocol)
    knn_ks: list[int] = field(default_factory=lambda: [20, 200])
    random_timesteps: list[int] | None = None  # the random-init control's t (None: the smallest and the chosen)


@dataclass
class StudyHeads:
    """Heads on the frozen U-Net, ``difrep train`` runs (SGD, StepLR) at the settings the sweep chose."""

    names: list[str] = field(default_factory=lambda: ["attention", "mlp", "cnn", "difformer", "difeed"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 8  # the paper's 28 epochs over 1.28M images; 8 over 60k, its four StepLR phases kept
    step_epochs: int = 2
    lr: float = 5e-2  # Attention, DifFormer, MLP, CNN (the paper's transformer heads)
    difeed_lr: float = 1e-2
    batch_size: int = 128
    dim: int = 128  # transformer width: the features have 32-64 channels, not 256-1024
    depth: int = 2
    num_heads: int = 4
    tokens: int = 4  # tokenizer pool: 4 x 4 tokens a block (the paper's 16 x 16 caps at 256x256)
    mlp_hidden: list[int] = field(default_factory=lambda: [512])
    cnn_channels: list[int] = field(default_factory=lambda: [128, 64])
    strategies: list[str] = field(default_factory=lambda: ["bottleneck", "all", "windowed", "multi-scale"])
    difeed_per_class: int | None = 300  # DifFeed runs the U-Net twice per image and epoch: 3,000 images
    difeed_epochs: int = 8


@dataclass
class StudySemi:
    """Table 5: a class-balanced 1% and 10% of the labels, the U-Net fine-tuned with the head."""

    percents: list[int] = field(default_factory=lambda: [1, 10])
    heads: list[str] = field(default_factory=lambda: ["linear", "difformer", "difeed"])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 8
    step_epochs: int = 2
    lr: float = 1e-2
    batch_size: int = 32


@dataclass
class StudyCKA:
    images: int = 2500  # the paper's ImageNet-50 test set size; features as the sweep pooled them (exact CKA)


@dataclass
class StudySamples:
    num: int = 256
    steps: int = 50  # DDIM
    colour_num: int = 64  # the channel-agreement measure uses the first 64 samples
    ddpm_num: int = 64  # also DDPM (learned variance), whose fresh noise at every step cleans speckle
    ddpm_steps: int = 250
    classifier_epochs: int = 3
    threshold: float = 0.9


@dataclass
class StudyRun:
    out: str = "studies/fashion_mnist"
    stages: list[str] = field(default_factory=lambda: ["samples", "sweep", "knn", "controls", "cka", "heads", "semi"])
    progress: bool = True
    workers: int = 1
    shard_size: int = 5000  # feature caches resume shard by shard
    # inputs per forward when extracting: what chunk_size="auto" takes on a CPU (135 images/s for the 28-pixel
    # model, every block, on 2 cores; 85 in one chunk of 512), fixed so that every machine chunks alike
    chunk_size: int = 64


@dataclass
class StudyConfig:
    data: StudyData = field(default_factory=StudyData)
    model: StudyModel = field(default_factory=StudyModel)
    sweep: StudySweep = field(default_factory=StudySweep)
    heads: StudyHeads = field(default_factory=StudyHeads)
    semi: StudySemi = field(default_factory=StudySemi)
    cka: StudyCKA = field(default_factory=StudyCKA)
    samples: StudySamples = field(default_factory=StudySamples)
    run: StudyRun = field(default_factory=StudyRun)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
