"""The demo's heads, trained by difrep's own engine from configs a user can run with ``difrep train``.

Attention and DifFormer train on a feature cache of the heads' images (``features.cache_train``: fixed
per-image noise, no flips), DifFeed on the images through the U-Net (new noise every epoch). Each head's
config is written to ``heads/<name>.yaml``; ``difrep train heads/<name>.yaml run.seed=S`` repeats a run.
The linear baseline is L-BFGS logistic regression on the same cache (``difrep probe --solver lbfgs``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..evaluation.linear import lbfgs_logistic_probe
from ..features.cache import FeatureCache, FeatureKey
from ..training import load_config, train


@dataclass(frozen=True)
class HeadProtocol:
    """AdamW with a cosine schedule over the epochs, cross-entropy, the same for every head."""

    epochs: int = 6
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.05


@dataclass
class HeadResult:
    name: str
    setting: str
    test_top1: list[float]
    parameters: int
    seconds: float
    command: str = ""

    @property
    def mean(self) -> float:
        return statistics.fmean(self.test_top1)

    @property
    def std(self) -> float:
        return statistics.stdev(self.test_top1) if len(self.test_top1) > 1 else 0.0


def linear_baseline(caches: tuple[FeatureCache, FeatureCache], key: FeatureKey, seeds: list[int]) -> HeadResult:
    """L-BFGS logistic regression on the heads' cached features (deterministic: one value for every seed)."""
    began = time.perf_counter()
    train_x = caches[0].features(key).to_tensor()
    result = lbfgs_logistic_probe(train_x, caches[0].labels, caches[1].features(key).to_tensor(), caches[1].labels, 10)
    command = (f"difrep probe --solver lbfgs --train {caches[0].folder} --test {caches[1].folder} --key {key.name}")
    return HeadResult("Logistic regression (L-BFGS)", f"t={key.t}, b={key.b}, pool {key.pool}", [result.top1] * len(seeds),
                      10 * (train_x.shape[1] + 1), time.perf_counter() - began, command)


def train_head(name: str, setting: str, config: dict[str, Any], folder: Path, seeds: list[int]) -> HeadResult:
    """Write ``config`` to ``folder/<name>.yaml`` and train it once per seed with :func:`difrep.training.train`."""
    slug = config["head"]["name"]
    path = folder / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    began, accs, params = time.perf_counter(), [], 0
    for seed in seeds:
        out = folder / f"{slug}-seed{seed}"
        metrics = train(load_config(path, [f"run.seed={seed}", f"run.out={out}"]))
        accs.append(metrics["top1"])
        params = metrics["parameters"]
        print(f"[demo] {name} ({setting}), seed {seed}: test top-1 {metrics['top1']:.1f}%", flush=True)
    return HeadResult(name, setting, accs, params, time.perf_counter() - began,
                      f"difrep train {path} run.seed=SEED run.out={folder}/{slug}-seedSEED")


def head_configs(model: dict[str, Any], data: dict[str, Any], caches: tuple[Path, Path], settings: dict[str, Any],
                 head: dict[str, Any], protocol: HeadProtocol, progress: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, setting, ``difrep train`` config) of the Attention head, DifFormer and DifFeed."""
    t0, b0, ts, bs = settings["t"], settings["b"], settings["T"], settings["B"]
    common = {
        "model": model, "data": data,
        "optim": {"name": "adamw", "schedule": "cosine", "lr": protocol.lr, "weight_decay": protocol.weight_decay,
                  "batch_size": protocol.batch_size, "epochs": protocol.epochs, "eval_every": protocol.epochs},
        "run": {"progress": progress, "tensorboard": False},
    }
    cached = {"cache_train": str(caches[0]), "cache_test": str(caches[1]), "pool": head["max_tokens"]}
    return [
        ("Attention", f"t={t0}, b={b0}",
         {**common, "features": {"timesteps": [t0], "blocks": [b0], **cached}, "head": {"name": "attention", **head}}),
        ("DifFormer", f"T={ts}, B={bs}",
         {**common, "features": {"timesteps": ts, "blocks": bs, **cached}, "head": {"name": "difformer", **head}}),
        ("DifFeed", f"t={t0}, b={settings['difeed_block']}, bottleneck feedback",
         {**common, "features": {"timesteps": [t0], "blocks": [settings["difeed_block"]]},
          "head": {"name": "difeed", "strategy": "bottleneck", **head}}),
    ]
