"""The demo study: does difrep's own Fashion-MNIST diffusion model show the paper's findings?

Steps: (1) a t x b linear-probe sweep of the shipped model; (2) the same probe on a random-init copy
and on raw pixels; (3) linear, Attention, DifFormer and DifFeed heads trained briefly, over a few
seeds, at the settings the sweep recommends; (4) a sample grid; (5) report.md. Every choice of
setting is made on a held-out part of the training split; the test split is only measured.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from ..data import DEBIAN_FASHION_MNIST, balanced_subset, build_transform, held_out_split, load_split
from ..diffusion import sample
from ..evaluation.linear import fit_logistic_probe
from ..evaluation.plots import plot_sweep
from ..evaluation.sweep import SweepRow, best_row, run_sweep, write_csv
from ..features.cache import CacheWriter, FeatureCache, FeatureKey
from ..heads import AttentionHead, DifFeed, DifFormer
from ..models import create_model
from ..utils.files import weights_sha256
from ..utils.images import save_grid
from .heads import HeadProtocol, fit_head, top1

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


@dataclass
class HeadResult:
    name: str
    setting: str
    test_top1: list[float]
    parameters: int
    seconds: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.test_top1)

    @property
    def std(self) -> float:
        return statistics.stdev(self.test_top1) if len(self.test_top1) > 1 else 0.0


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


def _batched(fn, n: int, batch_size: int = 256) -> dict[int, torch.Tensor]:
    """Concatenate ``fn(rows)`` (a dict of tensors) over all rows in batches."""
    parts = [fn(rows) for rows in torch.arange(n).split(batch_size)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


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
                train: Images, test: Images, out: Path, description: dict) -> list[HeadResult]:
    """The linear probe (L-BFGS, converged) and the Attention, DifFormer and DifFeed heads, each trained
    briefly once per seed of ``cfg.seeds`` with one protocol.

    ``splits`` are the data sets, ``train`` and ``test`` the same images as tensors (for DifFeed)."""
    ts, bs = settings["T"], settings["B"]
    caches = [_extract(model, split, out / f"cache-heads-{tag}", ts, bs, [cfg.head_tokens],
                       {**description, "split": tag}, cfg.progress) for split, tag in zip(splits, ("train", "test"))]
    p = cfg.head_tokens

    def maps(cache: FeatureCache, t: int, b: int) -> torch.Tensor:
        return cache.features(FeatureKey(t, b, p)).to_tensor().reshape(-1, model.block_info(b).num_chs, p, p)

    train_y, test_y = caches[0].labels, caches[1].labels
    transformer = dict(dim=cfg.head_dim, depth=cfg.head_depth, num_heads=cfg.head_heads, max_tokens_size=p)
    t0, b0 = settings["t"], settings["b"]
    single = [maps(c, t0, b0) for c in caches]
    fusion = [{(t, b): maps(c, t, b) for t in ts for b in bs} for c in caches]

    def attention(_: int) -> tuple[nn.Module, list]:
        head = AttentionHead(model.block_info(b0).num_chs, model.block_info(b0).resolution, 10, **transformer)
        return head, [lambda r, x=x: head(x[r]) for x in single]

    def difformer(_: int) -> tuple[nn.Module, list]:
        shapes = {b: (model.block_info(b).num_chs, model.block_info(b).resolution) for b in bs}
        head = DifFormer(shapes, ts, 10, **transformer)
        return head, [lambda r, f=f: head({k: v[r] for k, v in f.items()}) for f in fusion]

    feed = dict(t=t0, feature_block=settings["difeed_block"], seed=0, train_noise="fixed", **transformer)
    # the first pass reads the frozen U-Net at fixed noise: computed once per split, shared by every seed
    probe_head = DifFeed(model, 10, **feed).eval()
    firsts = [_batched(lambda r, x=x, i=i: probe_head.first_pass(probe_head.noisy(x[r], i[r].tolist())), len(x))
              for x, _, i in (train, test)]

    def difeed(_: int) -> tuple[nn.Module, list]:
        head = DifFeed(model, 10, **feed)
        return head, [lambda r, x=x, i=i, f=f: head(x[r], i[r].tolist(), first={b: v[r] for b, v in f.items()})
                      for (x, _, i), f in zip((train, test), firsts)]

    specs = [("Attention", f"t={t0}, b={b0}", attention),
             ("DifFormer", f"T={ts}, B={bs}", difformer),
             ("DifFeed", f"t={t0}, b={settings['difeed_block']}, bottleneck feedback", difeed)]
    began = time.perf_counter()
    pooled = [F.adaptive_avg_pool2d(x, 2).flatten(1) for x in single]
    probe = fit_logistic_probe(pooled[0], train_y, 10, (1e-4, 1e-2), max_iter=100)
    linear = probe.accuracy(pooled[1], test_y)[1]
    results = [HeadResult("Logistic regression (L-BFGS)", f"t={t0}, b={b0}, pool 2, L-BFGS (deterministic)",
                          [linear] * len(cfg.seeds), 10 * (pooled[0].shape[1] + 1), time.perf_counter() - began)]
    for name, setting, build in specs:
        began, accs, params = time.perf_counter(), [], 0
        for seed in cfg.seeds:
            torch.manual_seed(seed)
            head, (fwd_train, fwd_test) = build(seed)
            model.requires_grad_(False)
            params = sum(q.numel() for q in head.parameters() if q.requires_grad)
            fit_head(head, fwd_train, train_y, cfg.protocol, seed)
            accs.append(top1(head, fwd_test, test_y))
        results.append(HeadResult(name, setting, accs, params, time.perf_counter() - began))
        print(f"[demo] {name} ({setting}): test top-1 {statistics.fmean(accs):.1f}% over seeds {cfg.seeds}", flush=True)
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
    random_model = create_model(MODEL).requires_grad_(False)
    random_ts = sorted({min(cfg.timesteps), best.t})
    random_rows = _sweep(random_model, "random", train_set, test_set, cfg, random_ts, out,
                         {**description, "model": {"name": MODEL, "weights": "random init, seed 0"}})
    pixels = pixel_probe(train[:2], test[:2])
    clock.stage("controls (random init, pixels)", began)

    began = time.perf_counter()
    settings = choose_settings(rows, model)
    sub = balanced_subset(train[1].tolist(), per_class=min(cfg.head_train_per_class, cfg.train_per_class), seed=0)
    head_train = tuple(x[torch.tensor(sub)] for x in train)
    heads = train_heads(model, cfg, settings, (Subset(train_set, sub), test_set), head_train, test, out,  # type: ignore[arg-type]
                        description)
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
