"""The demo study: does difrep's own Fashion-MNIST diffusion model show the paper's findings?

Steps: (1) a t x b sweep of the shipped model (L-BFGS logistic regression per cell); (2) the same on a
random-init copy and on raw pixels; (3) the Attention head, DifFormer and DifFeed trained briefly by
``difrep train``'s engine, over a few seeds, at the settings the sweep recommends, against the linear
baseline; (4) a sample grid; (5) report.md. Every choice of
setting is made on a held-out part of the training split; the test split is only measured.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import DEBIAN_FASHION_MNIST, build_transform, held_out_split, load_split
from ..diffusion import sample
from ..evaluation.linear import fit_logistic_probe
from ..evaluation.plots import plot_sweep
from ..evaluation.sweep import SweepRow, best_row, run_sweep, write_csv
from ..features.cache import CacheWriter, FeatureCache, FeatureKey
from ..models import create_model
from ..utils.files import weights_sha256
from ..utils.images import save_grid
from .heads import HeadProtocol, HeadResult, head_configs, linear_baseline, train_head

MODEL = "adm-fmnist-28"


@dataclass
class DemoConfig:
    data_root: str = str(DEBIAN_FASHION_MNIST)
    out: str = "demo_out"
    train_per_class: int = 100
    test_per_class: int = 100
    head_train_per_class: int = 50  # the heads train on this class-balanced part of the training images
    timesteps: list[int] = field(default_factory=lambda: [10, 50, 150, 300, 600])
    blocks: list[int] | None = None  # None: every block
    pools: list[int] = field(default_factory=lambda: [2])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    head_dim: int = 128
    head_depth: int = 2
    head_heads: int = 4
    head_tokens: int = 7
    protocol: HeadProtocol = field(default_factory=HeadProtocol)
    samples: int = 64
    sample_steps: int = 50
    checkpoint: str | None = None
    progress: bool = True


class _Clock:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def stage(self, name: str, began: float) -> None:
        self.stages[name] = time.perf_counter() - began
        print(f"[demo] {name}: {self.stages[name]:.0f}s", flush=True)


Images = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _images(dataset: Dataset) -> Images:
    """All images [N, 3, H, W], labels and data-set indices of a (small) data set, in its order."""
    samples = [dataset[i] for i in range(len(dataset))]
    return (torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples]),
            torch.tensor([s[2] for s in samples]))


def _extract(model: nn.Module, data, out: Path, timesteps: Sequence[int], blocks: Sequence[int],
             pools: Sequence[int], description: dict, progress: bool) -> FeatureCache:
    writer = CacheWriter(out, model, timesteps, blocks, pools, description=description, seed=0,
                         chunk_size=256, shard_size=100_000)
    writer.run(data, batch_size=128, workers=0, progress=progress)
    return FeatureCache(out)


def _sweep(model: nn.Module, name: str, train, test, cfg: DemoConfig, timesteps: Sequence[int], out: Path,
           description: dict) -> list[SweepRow]:
    blocks = cfg.blocks or list(range(1, model.num_blocks + 1))
    caches = [_extract(model, split, out / f"cache-{name}-{tag}", timesteps, blocks, cfg.pools,
                       {**description, "split": tag}, cfg.progress) for split, tag in ((train, "train"), (test, "test"))]
    rows = run_sweep(*caches, progress=cfg.progress, solver="lbfgs")
    write_csv(rows, out / f"sweep_{name}.csv")
    return rows


def pixel_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                val_fraction: float = 0.1) -> dict[str, float]:
    """The linear probe of the sweep (same L2 grid, same held-out split) on raw grey pixels."""
    x, y = train[0][:, 0].flatten(1), train[1]
    xt, yt = test[0][:, 0].flatten(1), test[1]
    fit, val = held_out_split(y, val_fraction, seed=0)
    probe = fit_logistic_probe(x[fit], y[fit], 10, (1e-4, 1e-2), max_iter=100)
    return {"val_top1": probe.accuracy(x[val], y[val])[1], "test_top1": probe.accuracy(xt, yt)[1], "dim": x.shape[1]}


def _top(rows: list[SweepRow], key, k: int, **fixed) -> list[int]:
    chosen = [r for r in rows if all(getattr(r, a) == v for a, v in fixed.items())]
    ranked = sorted(chosen, key=lambda r: (-r.probe_val_top1, -r.knn20_val_top1))
    out: list[int] = []
    for r in ranked:
        if getattr(r, key) not in out:
            out.append(getattr(r, key))
    return sorted(out[:k])


def choose_settings(rows: list[SweepRow], model: nn.Module) -> dict[str, Any]:
    """Settings for the heads, all from held-out accuracy: the best (t, b); DifFormer's T (best 3 steps at
    that b) and B (best 3 blocks at that t); DifFeed's feature block (the best decoder block at that t)."""
    best = best_row(rows)
    middle = model.num_encoder_blocks + 1
    decoder = [r for r in rows if r.t == best.t and r.pool == best.pool and r.b > middle]
    feed_block = best.b if best.b > middle else max(decoder, key=lambda r: r.probe_val_top1).b
    return {"t": best.t, "b": best.b, "pool": best.pool,
            "T": _top(rows, "t", 3, b=best.b, pool=best.pool), "B": _top(rows, "b", 3, t=best.t, pool=best.pool),
            "difeed_block": feed_block}


def train_heads(model: nn.Module, cfg: DemoConfig, settings: dict[str, Any], splits: tuple[Dataset, Dataset],
                out: Path, description: dict) -> list[HeadResult]:
    """The linear baseline and the Attention, DifFormer and DifFeed heads on the heads' images, each head
    trained by difrep's engine once per seed of ``cfg.seeds`` (see :mod:`difrep.demo.heads`)."""
    ts, bs, p = settings["T"], settings["B"], cfg.head_tokens
    folders = (out / "cache-heads-train", out / "cache-heads-test")
    caches = tuple(_extract(model, split, folder, ts, bs, [p, 2], {**description, "split": tag}, cfg.progress)
                   for split, folder, tag in zip(splits, folders, ("train", "test")))
    results = [linear_baseline(caches, FeatureKey(settings["t"], settings["b"], 2), cfg.seeds)]  # type: ignore[arg-type]
    weights = {"checkpoint": cfg.checkpoint} if cfg.checkpoint else {"pretrained": True}
    per_class = min(cfg.head_train_per_class, cfg.train_per_class)
    protocol = replace(cfg.protocol, batch_size=min(cfg.protocol.batch_size, 10 * per_class))  # one batch at least
    data = {"name": "fashion-mnist", "root": cfg.data_root, "per_class": per_class,
            "test_per_class": cfg.test_per_class, "subset_seed": 0, "flip": False, "workers": 0}
    head = {"dim": cfg.head_dim, "depth": cfg.head_depth, "num_heads": cfg.head_heads, "max_tokens": p}
    folder = out / "heads"
    folder.mkdir(parents=True, exist_ok=True)
    for name, setting, config in head_configs({"name": MODEL, **weights}, data, folders, settings, head, protocol,
                                              cfg.progress):
        results.append(train_head(name, setting, config, folder, cfg.seeds))
    return results


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the whole study into ``cfg.out``; returns the summary also written to summary.json."""
    from .report import write_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clock, start = _Clock(), time.perf_counter()
    model = (create_model(MODEL, checkpoint=cfg.checkpoint) if cfg.checkpoint
             else create_model(MODEL, pretrained=True)).requires_grad_(False)
    transform = build_transform(model.image_size)
    train_set, _ = load_split("fashion-mnist", cfg.data_root, "train", transform, cfg.train_per_class, seed=0)
    test_set, _ = load_split("fashion-mnist", cfg.data_root, "test", transform, cfg.test_per_class, seed=0)
    train, test = _images(train_set), _images(test_set)
    description = {"model": {"name": MODEL, "weights_sha256": weights_sha256(model)},
                   "data": {"root": cfg.data_root, "train_per_class": cfg.train_per_class,
                            "test_per_class": cfg.test_per_class}}

    began = time.perf_counter()
    rows = _sweep(model, "trained", train_set, test_set, cfg, cfg.timesteps, out, description)
    best = best_row(rows)
    plot_sweep(rows, best, out / "sweep_trained.png", "probe_val_top1",
               f"{MODEL} (shipped weights): held-out linear-probe top-1 (%)")
    plot_sweep(rows, best, out / "sweep_trained_test.png", "probe_test_top1",
               f"{MODEL} (shipped weights): test linear-probe top-1 (%)")
    clock.stage("sweep of the trained model", began)

    began = time.perf_counter()
    torch.manual_seed(0)
    with warnings.catch_warnings():  # the control is random on purpose: no warning about the shipped weights
        warnings.simplefilter("ignore", UserWarning)
        random_model = create_model(MODEL).requires_grad_(False)
    random_ts = sorted({min(cfg.timesteps), best.t})
    random_rows = _sweep(random_model, "random", train_set, test_set, cfg, random_ts, out,
                         {**description, "model": {"name": MODEL, "weights": "random init, seed 0"}})
    pixels = pixel_probe(train[:2], test[:2])
    clock.stage("controls (random init, pixels)", began)

    began = time.perf_counter()
    settings = choose_settings(rows, model)
    # the heads' images: the same class-balanced subset that their configs' data section selects
    head_set, _ = load_split("fashion-mnist", cfg.data_root, "train", transform,
                             min(cfg.head_train_per_class, cfg.train_per_class), seed=0)
    heads = train_heads(model, cfg, settings, (head_set, test_set), out, description)
    clock.stage("heads", began)

    began = time.perf_counter()
    images = sample(model, cfg.samples, steps=cfg.sample_steps, method="ddim", seed=0, progress=cfg.progress)
    save_grid(images, out / "samples.png")
    clock.stage("samples", began)
    clock.stages["total"] = time.perf_counter() - start

    summary = {"config": asdict(cfg), "best": asdict(best), "random_best": asdict(best_row(random_rows)),
               "pixels": pixels, "settings": settings,
               "heads": [{**asdict(h), "mean": h.mean, "std": h.std} for h in heads],
               "seconds": clock.stages, "rows": [asdict(r) for r in rows],
               "random_rows": [asdict(r) for r in random_rows], "num_blocks": model.num_blocks,
               "middle_block": model.num_encoder_blocks + 1}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(summary, out / "report.md")
    print(f"[demo] wrote {out / 'report.md'} in {clock.stages['total']:.0f}s", flush=True)
    return summary
