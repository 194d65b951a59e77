"""What every stage of a study shares: its models, its images and its feature caches, each made once."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import DEBIAN_FASHION_MNIST, build_transform, held_out_split, load_split
from ..errors import UserError
from ..features.cache import CacheWriter, FeatureCache, FeatureKey
from ..models import create_model
from ..models.registry import BACKBONE_FAMILIES
from ..utils.files import weights_sha256
from .spec import StudySpec

MODELS = ("trained", "random")


def digest(value: Any) -> str:
    """A short, stable hash of a JSON-able value: the key of a stage's or a cache's settings."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


class StudyContext:
    """One study folder's shared state. Tensors are made on the models' device (CUDA when present)."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.out = Path(spec.out)
        self.progress = bool(spec.run["progress"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._splits: dict[tuple[str, int | None], Dataset] = {}

    # ----- models
    @property
    def _family(self) -> bool:
        """Whether the model is a timm:, diffusers: or sd: backbone (weights from a file or folder, options in flags)."""
        return self.spec.model["name"].partition(":")[0] + ":" in BACKBONE_FAMILIES

    @cached_property
    def trained(self) -> nn.Module:
        m = self.spec.model
        if self._family:
            model = create_model(m["name"], checkpoint=m["checkpoint"], **(m["flags"] or {}))
        elif m["flags"]:
            raise UserError(f"{self.spec.source}: model.flags are the options of a timm:, diffusers: or sd: backbone; "
                            f"{m['name']!r} is a preset")
        else:
            model = (create_model(m["name"], checkpoint=m["checkpoint"]) if m["checkpoint"]
                     else create_model(m["name"], pretrained=True))
        return model.requires_grad_(False).to(self.device)

    @cached_property
    def random(self) -> nn.Module:
        """The architecture as it initialises (``model.random_seed``): the control every finding compares with."""
        torch.manual_seed(self.spec.model["random_seed"])
        if self._family:  # the denoiser re-initialised, the input pipeline (VAE, text context) kept
            return self.trained.random_copy().requires_grad_(False).to(self.device)
        with warnings.catch_warnings():  # random on purpose: no warning about missing weights
            warnings.simplefilter("ignore", UserWarning)
            return create_model(self.spec.model["name"]).requires_grad_(False).to(self.device)

    def model(self, which: str) -> nn.Module:
        if which not in MODELS:
            raise UserError(f"{self.spec.source}: model {which!r}: use {' or '.join(MODELS)}")
        return self.trained if which == "trained" else self.random

    @cached_property
    def weights_sha256(self) -> str:
        return weights_sha256(self.trained)

    def identity(self) -> dict[str, Any]:
        """What every stage's result depends on: the data and the studied weights, not where they are (a data
        folder or a checkpoint's file name), so that a study folder moved to another machine still reads back."""
        data = {k: v for k, v in self.spec.data.items() if k not in ("root", "fashion_root")}
        model = {k: v for k, v in self.spec.model.items() if k != "checkpoint" and (k != "flags" or v)}  # as before flags
        return {"data": data, "model": {**model, "weights_sha256": self.weights_sha256}}

    def model_section(self) -> dict[str, Any]:
        """The ``model`` section of a ``difrep train`` config for the studied weights."""
        m = self.spec.model
        if self._family:
            return {"name": m["name"], "checkpoint": m["checkpoint"], "flags": dict(m["flags"] or {})}
        return {"name": m["name"], "checkpoint": m["checkpoint"]} if m["checkpoint"] else {"name": m["name"], "pretrained": True}

    # ----- images
    @property
    def data_root(self) -> str:
        return str(self.spec.data["root"] or DEBIAN_FASHION_MNIST)

    def per_class(self, split: str) -> int | None:
        return self.spec.data["train_per_class" if split == "train" else "test_per_class"]

    def split(self, split: str, per_class: int | None = None) -> Dataset:
        """A seeded, class-balanced subset (``per_class`` images a class, None: all) of a split."""
        if (split, per_class) not in self._splits:
            data, _ = load_split(self.spec.data["name"], self.data_root, split, build_transform(self.trained.image_size),
                                 per_class, seed=0)
            self._splits[split, per_class] = data
        return self._splits[split, per_class]

    def held_out(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The part of the training images every setting is chosen on (never the test split)."""
        return held_out_split(labels, self.spec.data["val_fraction"], seed=0)

    def grey_images(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A split's images [N, 1, H, W] in [-1, 1] (the first channel: grey data is stored as RGB) and labels."""
        data = self.split(split, self.per_class(split))
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        return torch.stack([s[0][:1] for s in items]), torch.tensor([s[1] for s in items])

    # ----- features
    def cache(self, which: str, split: str, timesteps: Sequence[int], blocks: Sequence[int], pools: Sequence[int],
              per_class: int | None = None) -> FeatureCache:
        """Features of a split (fixed per-image noise, seed 0). An earlier cache of the same model and images that
        holds every asked key is read instead; otherwise one is extracted, resumed shard by shard."""
        per_class = self.per_class(split) if per_class is None else per_class
        weights = f"random init, seed {self.spec.model['random_seed']}" if which == "random" else self.weights_sha256
        description = {"model": {"name": self.spec.model["name"], "weights": weights}, "split": split,
                       "data": {"name": self.spec.data["name"], "root": self.data_root, "per_class": per_class}}
        wanted = {FeatureKey(t, b, p) for t in timesteps for b in blocks for p in pools}
        for manifest in sorted((self.out / "cache").glob("*/manifest.json")):
            found = json.loads(manifest.read_text())
            if all(found.get(k) == v for k, v in description.items()) and wanted <= {FeatureKey.parse(n) for n in found["keys"]}:
                folder = manifest.parent
                if self._complete(folder):
                    return FeatureCache(folder)
        folder = self.out / "cache" / f"{which}-{split}-{digest([description, sorted(wanted)])}"
        r = self.spec.run
        writer = CacheWriter(folder, self.model(which), sorted(set(timesteps)), sorted(set(blocks)), sorted(set(pools)),
                             description=description, seed=0, shard_size=r["shard_size"], chunk_size=r["chunk_size"])
        writer.run(self.split(split, per_class), batch_size=r["batch_size"], workers=r["workers"], device=self.device,
                   progress=self.progress)
        return FeatureCache(folder)

    @staticmethod
    def _complete(folder: Path) -> bool:
        try:
            FeatureCache(folder)
        except UserError:
            return False
        return True

    def feature_pair(self, which: str, timesteps: Sequence[int], blocks: Sequence[int], pools: Sequence[int],
                     train_per_class: int | None = None) -> tuple[FeatureCache, FeatureCache]:
        """The training and test caches of the same keys."""
        return (self.cache(which, "train", timesteps, blocks, pools, train_per_class),
                self.cache(which, "test", timesteps, blocks, pools))
