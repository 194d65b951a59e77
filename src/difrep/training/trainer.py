"""Heads on (frozen or fine-tuned) diffusion features: the classification task of the training engine.

Determinism is by construction: every epoch reseeds the data order from (seed, epoch) and the
training noise and flips from (seed, epoch, image index), so a run resumed from its last epoch
checkpoint ends with the same weights and metrics as one never interrupted, and 2 processes take the
steps of 1. Evaluation uses per-image noise and counts every test image exactly once, whatever the
number of processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..data import build_loader, build_transform, load_split
from ..engine import Engine, EngineSettings, Task, read_checkpoint
from ..errors import UserError
from ..evaluation.metrics import count_classes
from ..features import FeatureExtractor
from ..features.cache import CachedFeatures, FeatureCache, FeatureKey
from ..features.noise import image_seed, per_image_noise
from ..heads import AttentionHead, CNNHead, DifFeed, DifFormer, LinearHead, MLPHead
from ..utils.files import file_sha256
from ..utils.precision import autocast, precision_dtype
from .config import TrainConfig, config_from_dict

HEADS = ("linear", "mlp", "cnn", "attention", "difformer", "difeed")


class Classifier(nn.Module):
    """A backbone and a head: images in [-1, 1] to logits.

    The noise of x_t is drawn per image from (seed, image index): in eval mode with ``seed`` (the
    evaluation noise, the same on every machine), in train mode with ``train_noise_seed``, which the
    trainer changes every epoch, so that each image gets new noise at every pass over the data. The
    training flip (``flip``) is drawn the same way. Neither depends on the batch an image lands in or
    on the number of processes.
    """

    def __init__(self, model: nn.Module, head: nn.Module, timesteps: list[int], blocks: list[int], seed: int,
                 finetune: bool, flip: bool = False) -> None:
        super().__init__()
        self.model, self.head, self.flip = model, head, flip
        self.key = (timesteps[0], blocks[0])
        self.train_noise_seed = seed
        # a tuple, so that the extractor's reference to the U-Net is not registered a second time
        self._extractor = () if isinstance(head, DifFeed) else (
            FeatureExtractor(model, timesteps, blocks, noise="fixed", seed=seed, chunk_size=4096,
                             requires_grad=finetune or bool(model.trainable_with_head())),)
        self.train(False)

    def forward(self, images: torch.Tensor, indices: list[int]) -> torch.Tensor:
        noise = None
        if self.training:
            if self.model.takes_timestep:
                noise = per_image_noise(self.model.input_shape, indices, self.train_noise_seed, device=images.device)
            if self.flip:
                mirrored = [image_seed(self.train_noise_seed, i, draw=1) & 1 == 1 for i in indices]
                mask = torch.tensor(mirrored, device=images.device)[:, None, None, None]
                images = torch.where(mask, images.flip(-1), images)
        if not self._extractor:
            return self.head(images, indices, noise=None if noise is None else noise[:, 0])
        feats = self._extractor[0](images, indices, noise=noise)
        return self.head(feats) if isinstance(self.head, DifFormer) else self.head(feats[self.key])


def _to_device(batch: list[Any], device: torch.device) -> tuple[Any, torch.Tensor, list[int]]:
    """Images (or cached features) and labels to the device; the data-set indices stay on the host, where
    they seed the noise."""
    images, labels, indices = batch
    if isinstance(images, dict):
        images = {k: v.to(device, non_blocking=True) for k, v in images.items()}
    else:
        images = images.to(device, non_blocking=True)
    return images, labels.to(device, non_blocking=True), indices.tolist()


def keep_reachable_blocks(model: nn.Module, head: nn.Module, blocks: list[int], finetune: bool) -> None:
    """Prune the U-Net after the deepest block the head reads, and when fine-tuning freeze what only
    DifFeed's gradient-free first pass reaches: every parameter left trainable then gets a gradient,
    as DDP requires, and nothing unused is kept in memory or in checkpoints."""
    if isinstance(head, DifFeed):
        model.prune_intermediate_layers([*(b for pair in head.pairs for b in pair), head.feature_block])
        if finetune:
            for info in model.feature_info:
                if info.index > head.feature_block:
                    for module in model.block_modules(info.index):
                        module.requires_grad_(False)
    else:
        model.prune_intermediate_layers(blocks)


class CachedClassifier(nn.Module):
    """A head on cached features: batches of ``{(t, b): [N, C, p, p]}`` (see :class:`CachedFeatures`) to logits."""

    def __init__(self, head: nn.Module, timesteps: list[int], blocks: list[int]) -> None:
        super().__init__()
        self.head, self.key = head, (timesteps[0], blocks[0])

    def forward(self, features: dict[tuple[int, int], torch.Tensor], indices: list[int]) -> torch.Tensor:
        return self.head(features) if isinstance(self.head, DifFormer) else self.head(features[self.key])


def block_shapes(model: nn.Module, blocks: list[int]) -> dict[int, tuple[int, int]]:
    """(channels, resolution) of each block's feature map."""
    return {b: (model.block_info(b).num_chs, model.block_info(b).resolution) for b in blocks}


def build_head(cfg: TrainConfig, num_classes: int, shapes: dict[int, tuple[int, int]],
               model: nn.Module | None = None) -> nn.Module:
    """The configured head for features of the given (channels, resolution) per block; DifFeed needs the U-Net."""
    h, ts, bs = cfg.head, cfg.features.timesteps, cfg.features.blocks
    if h.name not in HEADS:
        raise UserError(f"head.name={h.name!r} is unknown: use one of {', '.join(HEADS)}")
    if h.name != "difformer" and (len(ts) != 1 or len(bs) != 1):
        raise UserError(f"head {h.name!r} takes one noise step and one block: got timesteps={ts}, blocks={bs}")
    c, s = shapes[bs[0]]
    transformer = {"dim": h.dim, "depth": h.depth, "num_heads": h.num_heads, "norm": h.norm,
                   "max_tokens_size": h.max_tokens}
    if h.name == "linear":
        return LinearHead(c, num_classes, h.pool)
    if h.name == "mlp":
        return MLPHead(c, num_classes, h.hidden, h.pool)
    if h.name == "cnn":
        return CNNHead(c, num_classes, h.conv_channels)
    if h.name == "attention":
        return AttentionHead(c, s, num_classes, **transformer)
    if h.name == "difformer":
        return DifFormer({b: shapes[b] for b in bs}, ts, num_classes, **transformer)
    if model is None:
        raise UserError("head.name=difeed runs the U-Net twice on the images: it cannot train from cached "
                        "features (leave features.cache_train unset)")
    return DifFeed(model, num_classes, t=ts[0], feature_block=bs[0], strategy=h.strategy, seed=cfg.run.seed,
                   **transformer)


def _cached_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset, dict[int, tuple[int, int]]]:
    """The train and test caches as data sets, and the (channels, pool) of each block they hold."""
    f = cfg.features
    if not (f.cache_train and f.cache_test and f.pool):
        raise UserError("features.cache_train, features.cache_test and features.pool go together")
    if cfg.run.finetune:
        raise UserError("run.finetune=true trains the U-Net: it cannot train from cached features")
    caches = FeatureCache(f.cache_train), FeatureCache(f.cache_test)
    keys = [FeatureKey(t, b, f.pool) for t in f.timesteps for b in f.blocks]
    channels = {k.b: caches[0].features(k).shape[1] // f.pool**2 for k in keys}
    sets = [CachedFeatures(c, keys, channels) for c in caches]
    return sets[0], sets[1], {b: (c, f.pool) for b, c in channels.items()}


def _dataset(cfg: TrainConfig, split: str, image_size: int, train: bool) -> tuple[Dataset, int]:
    d = cfg.data
    options = {"class_list": d.class_list} if d.class_list else {}
    per_class = d.test_per_class if not train and d.test_per_class is not None else d.per_class
    seed = cfg.run.seed if d.subset_seed is None else d.subset_seed
    # the training flip is drawn per image by the Classifier, so that it does not depend on the process count
    data, classes = load_split(d.name, d.root, split, build_transform(image_size, train=train, flip=False),
                               per_class, seed, check=d.check, on_error=d.on_error, **options)  # type: ignore[arg-type]
    return data, len(classes)


class ClassificationTask(Task):
    """A head on (frozen or fine-tuned) U-Net features, trained by cross-entropy: the paper's protocol.

    Periods are epochs. Everything is built and checked before the first step."""

    log_fields = ("epoch", "loss", "lr", "top1", "top5", "seconds")

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.amp_dtype = precision_dtype(cfg.run.precision, "run.precision")
        if cfg.task != "classification":
            raise UserError(f"task={cfg.task!r}: this is the classification task (difrep train picks the task's own)")
        if cfg.optim.name not in ("sgd", "adam", "adamw"):
            raise UserError(f"optim.name={cfg.optim.name!r}: use sgd, adam or adamw")
        if cfg.optim.schedule not in ("step", "cosine", "constant"):
            raise UserError(f"optim.schedule={cfg.optim.schedule!r}: use step, cosine or constant")
        self.settings = EngineSettings(out=cfg.run.out, seed=cfg.run.seed, precision=cfg.run.precision,
                                       grad_accum=cfg.optim.grad_accum, progress=cfg.run.progress,
                                       tensorboard=cfg.run.tensorboard, wandb=cfg.run.wandb)
        self.num_periods = cfg.optim.epochs
        torch.manual_seed(cfg.run.seed)
        f = cfg.features
        if f.cache_train or f.cache_test:
            self.model: nn.Module | None = None
            self.train_data, self.test_data, shapes = _cached_datasets(cfg)
            classes = test_classes = count_classes(self.train_data.labels, self.test_data.labels)
        else:
            self.model = cfg.model.build()
            self.model.validate_timesteps(f.timesteps)
            self.model.validate_blocks(f.blocks)
            shapes = block_shapes(self.model, f.blocks)
            self.train_data, classes = _dataset(cfg, cfg.data.train_split, self.model.image_size, train=True)
            self.test_data, test_classes = _dataset(cfg, cfg.data.test_split, self.model.image_size, train=False)
        if classes != test_classes:
            raise UserError(f"{cfg.data.train_split} has {classes} classes but {cfg.data.test_split} has {test_classes}")
        self.num_classes = classes
        head = build_head(cfg, classes, shapes, self.model)
        if self.model is None:
            self.classifier: nn.Module = CachedClassifier(head, f.timesteps, f.blocks).to(self.device)
        else:
            if not cfg.run.finetune:
                self.model.freeze()
            keep_reachable_blocks(self.model, head, f.blocks, cfg.run.finetune)
            self.classifier = Classifier(self.model, head, f.timesteps, f.blocks, cfg.run.seed, cfg.run.finetune,
                                         flip=cfg.data.flip).to(self.device)
        self.module = self.classifier

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def resume_key(self, config: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in config.items() if k != "run"}, "seed": config["run"]["seed"]}

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        o = self.cfg.optim
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if o.name == "adamw":
            return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)

    def scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        o = self.cfg.optim
        if o.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_epochs, gamma=o.gamma)
        if o.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs)
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)

    def _backbone_prefixes(self) -> list[str]:
        """Where the U-Net sits in the classifier's state dict: ``model``, and ``head.model`` for DifFeed."""
        return [name for name, m in self.classifier.named_modules(remove_duplicate=False) if m is self.model]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights a run changes: the head, plus the U-Net (once) when fine-tuning, or what the backbone
        trains with the head (SD's learnable text). A frozen backbone is never saved: it is rebuilt from
        model.name / checkpoint / pretrained."""
        prefixes = [p + "." for p in self._backbone_prefixes()]
        kept = "model." if self.cfg.run.finetune else None
        with_head = {f"model.{n}" for n, p in (self.model.named_parameters() if self.model is not None else ())
                     if any(p is q for q in self.model.trainable_with_head())}
        return {k: v for k, v in self.classifier.state_dict().items()
                if k in with_head or not any(k.startswith(p) and p != kept for p in prefixes)}

    def train_loader(self, epoch: int) -> DataLoader:
        loader = build_loader(self.train_data, self.cfg.optim.batch_size, train=True, workers=self.cfg.data.workers,
                              distributed=self.world > 1, seed=self.cfg.run.seed)
        assert isinstance(loader.sampler, DistributedSampler)
        loader.sampler.set_epoch(epoch)
        return loader

    def begin_period(self, period: int) -> None:
        self.classifier.train_noise_seed = image_seed(self.cfg.run.seed + 1, period)
        if self.model is not None and not self.cfg.run.finetune:
            self.model.eval()

    def batches(self, period: int, first_step: int) -> Iterable[Any]:
        return self.train_loader(period)

    def loss(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels, indices = _to_device(batch, self.device)
        loss = F.cross_entropy(net(images, indices).float(), labels)
        return loss, {"loss": loss}

    def evaluate_now(self, period: int) -> bool:
        return (period + 1) % self.cfg.optim.eval_every == 0 or period + 1 == self.cfg.optim.epochs

    def evaluate(self) -> dict[str, Any]:
        """Top-1/top-5 over the whole test split, each image once across processes."""
        loader = build_loader(self.test_data, self.cfg.optim.batch_size, train=False, workers=self.cfg.data.workers,
                              distributed=self.world > 1)
        self.classifier.eval()
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)
        with torch.no_grad(), autocast(self.device, self.amp_dtype):
            for batch in tqdm(loader, desc="evaluate", disable=not (self.cfg.run.progress and self.rank == 0)):
                if batch is None:
                    continue
                images, labels, indices = _to_device(batch, self.device)
                top5 = self.classifier(images, indices).float().topk(min(5, self.num_classes), dim=1).indices
                hits = top5 == labels[:, None]
                counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), labels.new_tensor(len(labels))]).to(counts)
        if self.world > 1:
            dist.all_reduce(counts)
        return {"top1": 100 * counts[0].item() / counts[2].item(), "top5": 100 * counts[1].item() / counts[2].item(),
                "images": int(counts[2].item())}

    def extra_state(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def finish(self, out: Path, history: list[dict[str, Any]]) -> dict[str, Any]:
        row = history[-1] if history else {}
        trained = sum(v.numel() for k, v in self.trainable_state().items() if v.is_floating_point() and "running_" not in k)
        final = {**row, "parameters": trained, "checkpoint": str(out / "last.pt"), "checkpoint_sha256": file_sha256(out / "last.pt"),
                 "config": self.cfg.to_dict(), "data": asdict(self.cfg.data)}
        (out / "metrics.json").write_text(json.dumps(final, indent=2))
        return final


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the final metrics (with the trained parameters), also written to
    run.out/metrics.json."""
    return Engine(ClassificationTask(cfg)).run()


def evaluate_checkpoint(path: str | Path, overrides: dict[str, Any] | None = None,
                        state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild a run from its checkpoint and evaluate it on its test split (any number of processes);
    ``state``: the checkpoint as :func:`~difrep.engine.load_run_state` read it, not read again."""
    path = Path(path)
    state, data = read_checkpoint(path, overrides, state)
    cfg = config_from_dict(data)
    task = ClassificationTask(cfg)
    if task.num_classes != state["num_classes"]:
        raise UserError(f"{path} classifies {state['num_classes']} classes, the data has {task.num_classes}")
    task.load_trainable_state(state["weights"], path)
    return {**task.evaluate(), "checkpoint": str(path), "checkpoint_sha256": file_sha256(path),
            "epoch": state["epoch"], "config": cfg.to_dict()}
