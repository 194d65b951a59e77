"""The paper's study at full Fashion-MNIST scale with the shipped model, stage by stage, resumable.

Stages (``run.stages``), each writing ``<stage>/result.json`` under ``run.out``:

- ``samples``: DDIM samples, their channel agreement and how a reference classifier names them;
- ``sweep``: the paper's SGD linear probe over t x b (pool 2), then over pools at the chosen t (Figures 3-4);
- ``knn``: kNN top-1/top-5 at k = 20 and 200 on globally pooled features, every block (Table 9);
- ``controls``: the random-init copy and raw pixels under the same probe and kNN;
- ``cka``: linear CKA across blocks, across timesteps and against the random-init copy (Figure 5);
- ``heads``: Attention, DifFormer, DifFeed (four feedback strategies), MLP and CNN heads, several seeds
  (Tables 1, 4, 11-12), each a ``difrep train`` run whose config is written beside it;
- ``semi``: 1% and 10% of the labels with the U-Net fine-tuned (Table 5).

Every setting is chosen on a held-out part of the training images. Work is kept at a fine grain (a
feature-cache shard, a probe, an engine run), so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from ..data import balanced_subset, build_transform, held_out_split, load_split
from ..demo import choose_settings
from ..dense.study import mean_std
from ..diffusion import sample
from ..errors import UserError
from ..evaluation.cka import cka_matrix
from ..evaluation.knn import knn_accuracy
from ..evaluation.linear import fit_sgd_linear_probe
from ..evaluation.plots import plot_cka, plot_sweep
from ..evaluation.samples import accuracy, channel_disagreement, sample_recognition
from ..evaluation.sweep import SweepRow, best_row, sweep_row, write_csv
from ..features.cache import CacheWriter, FeatureCache, FeatureKey
from ..models import create_model
from ..training import load_config, train, train_reference_classifier
from ..utils.files import atomic_write, weights_sha256
from ..utils.images import save_grid
from .config import StudyConfig
from .report import write_report

MODEL = "adm-fmnist-28"
STAGES = ("samples", "sweep", "knn", "controls", "cka", "heads", "semi")  # cheap to costly


def memo(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON result, saved at ``path``; read back instead of recomputed once it exists."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(result, indent=2)))
    return result


def _stats(values: Sequence[float]) -> dict[str, Any]:
    mean, std = mean_std(values) if values else (float("nan"), 0.0)
    return {"values": list(values), "mean": mean, "std": std}


class Study:
    """One study folder: its models, data, caches and stages."""

    def __init__(self, cfg: StudyConfig) -> None:
        unknown = [s for s in cfg.run.stages if s not in STAGES]
        if unknown:
            raise UserError(f"run.stages: unknown stage(s) {unknown}; use {', '.join(STAGES)}")
        self.cfg = cfg
        self.out = Path(cfg.run.out)
        self.progress = cfg.run.progress
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._check_config()

    def _check_config(self) -> None:
        """A study folder holds the results of one config and one model: changing a protocol or the weights
        (a retrained shipped model) means another ``run.out`` (the run options, which stages to run and how,
        may change between calls)."""
        mine = {k: v for k, v in self.cfg.to_dict().items() if k != "run"}
        mine["model"] = {**mine["model"], "weights_sha256": self.model_sha256}
        path = self.out / "config.json"
        if path.is_file():
            theirs = json.loads(path.read_text())
            if theirs != mine:
                changed = sorted(f"{section}.{k}" for section in mine for k in mine[section]
                                 if theirs.get(section, {}).get(k) != mine[section][k])
                raise UserError(f"{self.out} holds a study made with another config (changed: {', '.join(changed)}): "
                                "use another run.out, or the config it was made with")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: p.write_text(json.dumps(mine, indent=2)))

    # ----- what every stage shares
    @cached_property
    def model(self) -> nn.Module:
        c = self.cfg.model
        model = create_model(MODEL, checkpoint=c.checkpoint) if c.checkpoint else create_model(MODEL, pretrained=True)
        return model.requires_grad_(False).to(self.device)

    @cached_property
    def model_sha256(self) -> str:
        """The studied weights' identity, recorded with the config and in every cache of them."""
        return weights_sha256(self.model)

    @cached_property
    def random_model(self) -> nn.Module:
        torch.manual_seed(self.cfg.model.random_seed)
        with warnings.catch_warnings():  # random on purpose: no warning about the shipped weights
            warnings.simplefilter("ignore", UserWarning)
            return create_model(MODEL).requires_grad_(False).to(self.device)

    @cached_property
    def splits(self) -> dict[str, Dataset]:
        d, transform = self.cfg.data, build_transform(28)
        return {split: load_split("fashion-mnist", d.root, split, transform, per_class, seed=0)[0]
                for split, per_class in (("train", d.train_per_class), ("test", d.test_per_class))}

    def test_per_class(self) -> int:
        """Test images a class for ``difrep train`` runs: all of them unless the study takes fewer, so that
        every head is scored on the test images the probes are (``difrep train`` otherwise falls back to
        its training ``per_class``)."""
        return self.cfg.data.test_per_class or len(self.splits["test"]) // 10  # type: ignore[arg-type]

    @property
    def blocks(self) -> list[int]:
        return self.cfg.sweep.blocks or list(range(1, self.model.num_blocks + 1))

    def weights(self) -> dict[str, Any]:
        """The model section of a ``difrep train`` config for the studied weights."""
        c = self.cfg.model.checkpoint
        return {"name": MODEL, "checkpoint": c} if c else {"name": MODEL, "pretrained": True}

    def cache(self, name: str, model: nn.Module, split: str, timesteps: Sequence[int], blocks: Sequence[int],
              pools: Sequence[int]) -> FeatureCache:
        """Features of one split (fixed per-image noise, seed 0), extracted once, resumed shard by shard."""
        folder = self.out / "cache" / f"{name}-{split}"
        weights = (f"random init, seed {self.cfg.model.random_seed}" if name.startswith("random")
                   else self.model_sha256)
        d = self.cfg.data
        description = {"model": {"name": MODEL, "weights": weights}, "split": split,
                       "data": {"root": d.root, "per_class": d.train_per_class if split == "train" else d.test_per_class}}
        writer = CacheWriter(folder, model, timesteps, blocks, pools, description=description, seed=0,
                             shard_size=self.cfg.run.shard_size, chunk_size=self.cfg.run.chunk_size)
        writer.run(self.splits[split], batch_size=256, workers=self.cfg.run.workers, device=self.device,
                   progress=self.progress)
        return FeatureCache(folder)

    def caches(self, name: str, model: nn.Module, timesteps: Sequence[int], blocks: Sequence[int],
               pools: Sequence[int]) -> tuple[FeatureCache, FeatureCache]:
        return tuple(self.cache(name, model, s, timesteps, blocks, pools) for s in ("train", "test"))  # type: ignore[return-value]

    def held_out(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return held_out_split(labels, self.cfg.data.val_fraction, seed=0)

    def probe_rows(self, folder: Path, train: FeatureCache, test: FeatureCache, keys: Sequence[FeatureKey]) -> list[SweepRow]:
        """The paper's SGD probe (and kNN k=20) per key, each cell saved as it finishes."""
        fit, val = self.held_out(train.labels)
        options = asdict(self.cfg.sweep.probe)
        return [SweepRow(**memo(folder / f"{key.name}.json",
                                lambda key=key: asdict(sweep_row(train, test, key, fit, val, probe_options=options))))
                for key in keys]

    # ----- stages
    def stage_samples(self) -> dict[str, Any]:
        s, folder = self.cfg.samples, self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        images = sample(self.model, s.num, steps=s.steps, method="ddim", seed=0, device=self.device,
                        progress=self.progress).cpu()
        save_grid(images[: s.colour_num], folder / f"samples_ddim{s.steps}.png")
        ddpm = sample(self.model, s.ddpm_num, steps=s.ddpm_steps, method="ddpm", seed=0, device=self.device,
                      progress=self.progress).cpu() if s.ddpm_num else None
        if ddpm is not None:
            save_grid(ddpm, folder / f"samples_ddpm{s.ddpm_steps}.png")
        sampled = time.perf_counter() - began
        unit = {split: self.grey_images(split) for split in ("train", "test")}
        classifier = train_reference_classifier(*unit["train"], epochs=s.classifier_epochs, seed=0,
                                                progress=self.progress)
        torch.save(classifier.state_dict(), folder / "reference_classifier.pt")
        seen = sample_recognition(classifier, images, unit["test"][0], threshold=s.threshold)
        if ddpm is not None:
            seen["ddpm_samples"] = sample_recognition(classifier, ddpm, unit["test"][0], threshold=s.threshold)["samples"]
        return {"channels": images.shape[1], "samples": s.num, "steps": s.steps, "ddpm_samples": s.ddpm_num,
                "ddpm_steps": s.ddpm_steps, "channel_disagreement": channel_disagreement(images[: s.colour_num]),
                "classifier_test_top1": accuracy(classifier, *unit["test"]), "threshold": s.threshold,
                "recognition": {k: asdict(v) for k, v in seen.items()}, "sample_seconds": sampled,
                "seconds": time.perf_counter() - began}

    def stage_sweep(self) -> dict[str, Any]:
        sw, folder = self.cfg.sweep, self.out / "sweep"
        train, test = self.caches("trained", self.model, sw.timesteps, self.blocks, [sw.pool])
        rows = self.probe_rows(folder / "probe", train, test, train.keys)
        best = best_row(rows)
        tr, te = self.pool_caches(best.t)
        pool_rows = [r for r in rows if r.t == best.t]
        pool_rows += self.probe_rows(folder / "probe", tr, te, [k for k in tr.keys if k.pool in set(sw.pools) - {sw.pool}])
        if max(self.blocks) <= self.model.num_encoder_blocks + 1:
            raise UserError(f"sweep.blocks={self.blocks}: include a decoder block (> {self.model.num_encoder_blocks + 1}); "
                            "DifFeed reads one")
        write_csv(rows, folder / "sweep.csv")
        write_csv(pool_rows, folder / "pools.csv")
        title = f"{MODEL}: SGD linear probe top-1 (%)"
        plot_sweep(rows, best, folder / "sweep_val.png", "probe_val_top1", f"{title}, held-out training images")
        plot_sweep(rows, best, folder / "sweep_test.png", "probe_test_top1", f"{title}, test images")
        plot_pools(pool_rows, folder / "pools_test.png", f"{title} at t={best.t}, by pool size (test)")
        return {"best": asdict(best), "settings": choose_settings(rows, self.model),
                "rows": [asdict(r) for r in rows], "pool_rows": [asdict(r) for r in pool_rows]}

    def knn_rows(self, train: FeatureCache, test: FeatureCache, keys: Sequence[FeatureKey]) -> list[dict[str, Any]]:
        ks = self.cfg.sweep.knn_ks
        rows = []
        for key in keys:
            x, xt = train.features(key).to_tensor(), test.features(key).to_tensor()
            acc = knn_accuracy(x, train.labels, xt, test.labels, int(train.labels.max()) + 1, ks=ks)
            rows.append({"t": key.t, "b": key.b, "pool": key.pool,
                         **{f"k{k}_top{n}": acc[k][n] for k in ks for n in (1, 5)}})
        return rows

    def pool_caches(self, t: int) -> tuple[FeatureCache, FeatureCache]:
        """The chosen t's features at every other pool size of the study, pool 1 (kNN's) always among them."""
        sw = self.cfg.sweep
        return self.caches("trained-pools", self.model, [t], self.blocks, sorted({1, *sw.pools} - ({sw.pool} - {1})))

    def stage_knn(self) -> dict[str, Any]:
        t = self.result("sweep")["best"]["t"]
        train, test = self.pool_caches(t)
        return {"t": t, "rows": self.knn_rows(train, test, [k for k in train.keys if k.pool == 1])}

    def grey_images(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A split's images [N, 1, 28, 28] in [-1, 1] and labels, in the caches' order."""
        data = self.splits[split]
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        return torch.stack([s[0][:1] for s in items]), torch.tensor([s[1] for s in items])

    def pixels(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.grey_images(split)
        return images.flatten(1), labels

    def stage_controls(self) -> dict[str, Any]:
        sw, folder = self.cfg.sweep, self.out / "controls"
        best = self.result("sweep")["best"]
        ts = sw.random_timesteps or sorted({min(sw.timesteps), best["t"]})
        train, test = self.caches("random", self.random_model, ts, self.blocks, [1, sw.pool])
        rows = self.probe_rows(folder / "random_probe", train, test, [k for k in train.keys if k.pool == sw.pool])
        knn = self.knn_rows(train, test, [k for k in train.keys if k.pool == 1])

        def pixel_result() -> dict[str, Any]:
            (x, y), (xt, yt) = self.pixels("train"), self.pixels("test")
            fit, val = self.held_out(y)
            probe = fit_sgd_linear_probe(x[fit], y[fit], 10, seed=0, **asdict(sw.probe))
            ks = sorted({20, *sw.knn_ks})  # k = 20 as in every sweep cell
            acc = knn_accuracy(x, y, xt, yt, 10, ks=ks)
            return {"dim": x.shape[1], "probe_val_top1": probe.accuracy(x[val], y[val])[1],
                    "probe_test_top1": probe.accuracy(xt, yt)[1], "probe_test_top5": probe.accuracy(xt, yt)[5],
                    **{f"k{k}_top{n}": acc[k][n] for k in ks for n in (1, 5)}}

        return {"random_rows": [asdict(r) for r in rows], "random_best": asdict(best_row(rows)), "random_knn": knn,
                "pixels": memo(folder / "pixels.json", pixel_result)}

    def head_runs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, setting, ``difrep train`` config) of every head run of the ``heads`` stage."""
        h, d, s = self.cfg.heads, self.cfg.data, self.result("sweep")["settings"]
        t0, b0, ts, bs, feed = s["t"], s["b"], s["T"], s["B"], s["difeed_block"]
        folders = {split: str(self.out / "cache" / f"heads-{split}") for split in ("train", "test")}
        data = {"name": "fashion-mnist", "root": d.root, "per_class": d.train_per_class,
                "test_per_class": self.test_per_class(), "subset_seed": 0, "flip": False, "workers": self.cfg.run.workers}
        optim = {"name": "sgd", "schedule": "step", "lr": h.lr, "momentum": 0.9, "batch_size": h.batch_size,
                 "epochs": h.epochs, "step_epochs": h.step_epochs, "gamma": 0.1, "eval_every": h.epochs}
        transformer = {"dim": h.dim, "depth": h.depth, "num_heads": h.num_heads, "max_tokens": h.tokens}
        base = {"model": self.weights(), "data": data, "optim": optim,
                "run": {"progress": self.progress, "tensorboard": False}}
        cached = {"cache_train": folders["train"], "cache_test": folders["test"], "pool": h.tokens}
        one = {"timesteps": [t0], "blocks": [b0], **cached}
        runs: list[tuple[str, str, dict[str, Any]]] = []
        for name in h.names:
            if name == "attention":
                runs.append(("Attention", f"t={t0}, b={b0}", {**base, "features": one, "head": {"name": "attention", **transformer}}))
            elif name == "difformer":
                runs.append(("DifFormer", f"T={ts}, B={bs}", {**base, "features": {"timesteps": ts, "blocks": bs, **cached},
                                                               "head": {"name": "difformer", **transformer}}))
            elif name == "mlp":
                runs.append(("MLP", f"t={t0}, b={b0}, hidden {h.mlp_hidden}", {**base, "features": one,
                             "head": {"name": "mlp", "hidden": h.mlp_hidden, "pool": 2}}))
            elif name == "cnn":
                runs.append(("CNN", f"t={t0}, b={b0}, channels {h.cnn_channels}", {**base, "features": one,
                             "head": {"name": "cnn", "conv_channels": h.cnn_channels}}))
            elif name == "difeed":
                few = {**data, "per_class": min(filter(None, (h.difeed_per_class, d.train_per_class)), default=None)}
                feed_optim = {**optim, "lr": h.difeed_lr, "epochs": h.difeed_epochs, "eval_every": h.difeed_epochs}
                for strategy in h.strategies:
                    runs.append((f"DifFeed ({strategy})", f"t={t0}, b={feed}, {few['per_class'] or 'all'}/class",
                                 {**base, "data": few, "optim": feed_optim, "features": {"timesteps": [t0], "blocks": [feed]},
                                  "head": {"name": "difeed", "strategy": strategy, **transformer}}))
                runs.append((f"Attention ({few['per_class'] or 'all'}/class, as DifFeed)", f"t={t0}, b={feed}",
                             {**base, "data": few, "optim": feed_optim, "features": {"timesteps": [t0], "blocks": [feed]},
                              "head": {"name": "attention", **transformer}}))
            else:
                raise UserError(f"heads.names: unknown head {name!r}; use attention, difformer, difeed, mlp, cnn")
        return runs

    def train_runs(self, folder: Path, runs: list[tuple[str, str, dict[str, Any]]], seeds: Sequence[int]) -> list[dict[str, Any]]:
        """Every run for every seed (each seed of every run before the next seed: a cut-short stage still
        compares), as engine runs that resume; returns per run its test top-1 over seeds."""
        folder.mkdir(parents=True, exist_ok=True)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs}
        for seed in seeds:
            for name, _, config in runs:
                slug = _slug(name)
                path = folder / f"{slug}.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                out = folder / f"{slug}-seed{seed}"
                run = memo(out / "study_run.json", lambda path=path, seed=seed, out=out: _timed_train(path, seed, out))
                results[name].append({k: run[k] for k in ("top1", "top5", "parameters", "seconds")} | {"seed": seed})
        return [{"name": name, "setting": setting, "config": f"{folder.name}/{_slug(name)}.yaml",
                 "command": f"difrep train {folder / _slug(name)}.yaml run.seed=SEED run.out={folder}/{_slug(name)}-seedSEED",
                 "runs": results[name], "top1": _stats([r["top1"] for r in results[name]]),
                 "parameters": results[name][0]["parameters"] if results[name] else 0}
                for name, setting, _ in runs]

    def stage_heads(self) -> dict[str, Any]:
        h, s = self.cfg.heads, self.result("sweep")["settings"]
        cached = {"attention", "difformer", "mlp", "cnn"} & set(h.names)
        if cached:
            self.caches("heads", self.model, sorted({s["t"], *s["T"]}), sorted({s["b"], *s["B"]}), [h.tokens])
        sweep = self.result("sweep")
        linear = next(r for r in sweep["rows"] if r["t"] == s["t"] and r["b"] == s["b"])
        same_pool = next((r for r in sweep["rows"] + sweep["pool_rows"]
                          if r["t"] == s["t"] and r["b"] == s["b"] and r["pool"] == h.tokens), None)
        return {"settings": s, "linear": linear, "linear_same_pool": same_pool,
                "heads": self.train_runs(self.out / "heads", self.head_runs(), h.seeds)}

    def stage_semi(self) -> dict[str, Any]:
        m, d, s = self.cfg.semi, self.cfg.data, self.result("sweep")["settings"]
        h = self.cfg.heads
        transformer = {"dim": h.dim, "depth": h.depth, "num_heads": h.num_heads, "max_tokens": h.tokens}
        heads = {"linear": ("Linear", {"timesteps": [s["t"]], "blocks": [s["b"]]}, {"name": "linear", "pool": 2}),
                 "difformer": ("DifFormer", {"timesteps": s["T"], "blocks": s["B"]}, {"name": "difformer", **transformer}),
                 "difeed": ("DifFeed (bottleneck)", {"timesteps": [s["t"]], "blocks": [s["difeed_block"]]},
                            {"name": "difeed", "strategy": "bottleneck", **transformer})}
        unknown = set(m.heads) - set(heads)
        if unknown:
            raise UserError(f"semi.heads: unknown {sorted(unknown)}; use linear, difformer, difeed")
        train_size = len(self.splits["train"])  # type: ignore[arg-type]
        out = []
        for pct in m.percents:
            per_class = max(1, round(train_size * pct / 100 / 10))
            runs = []
            for key in m.heads:
                name, features, head = heads[key]
                runs.append((f"{name}, {pct}%", f"{per_class}/class, fine-tuned", {
                    "model": self.weights(), "features": features, "head": head,
                    "data": {"name": "fashion-mnist", "root": d.root, "per_class": per_class,
                             "test_per_class": self.test_per_class(), "subset_seed": 0, "flip": True,
                             "workers": self.cfg.run.workers},
                    "optim": {"name": "sgd", "schedule": "step", "lr": m.lr, "momentum": 0.9,
                              "batch_size": min(m.batch_size, 10 * per_class),
                              "epochs": m.epochs, "step_epochs": m.step_epochs, "gamma": 0.1, "eval_every": m.epochs},
                    "run": {"progress": self.progress, "tensorboard": False, "finetune": True}}))
            out.append({"percent": pct, "per_class": per_class,
                        "heads": self.train_runs(self.out / "semi" / f"pct{pct}", runs, m.seeds)})
        return {"settings": s, "fractions": out}

    def stage_cka(self) -> dict[str, Any]:
        sw, folder, n = self.cfg.sweep, self.out / "cka", self.cfg.cka.images
        best = self.result("sweep")["best"]
        self.result("controls")  # the random-init copy's features
        t0, b0 = best["t"], best["b"]
        test = FeatureCache(self.out / "cache" / "trained-test")
        rand = FeatureCache(self.out / "cache" / "random-test")
        per_class = max(1, min(n, len(test.labels)) // (int(test.labels.max()) + 1))
        rows = torch.tensor(balanced_subset(test.labels.tolist(), per_class=per_class, seed=0))

        def get(cache: FeatureCache, t: int, b: int) -> torch.Tensor:
            return cache.features(FeatureKey(t, b, sw.pool))[rows].double()

        blocks, steps = self.blocks, sorted(sw.timesteps)
        across_b = cka_matrix([get(test, t0, b) for b in blocks], [get(test, t0, b) for b in blocks])
        across_t = cka_matrix([get(test, t, b0) for t in steps], [get(test, t, b0) for t in steps])
        random_t = t0 if FeatureKey(t0, b0, sw.pool) in set(rand.keys) else min(k.t for k in rand.keys)
        vs_random = cka_matrix([get(test, t0, b) for b in blocks], [get(rand, random_t, b) for b in blocks])
        folder.mkdir(parents=True, exist_ok=True)
        labels_b, labels_t = [f"b{b}" for b in blocks], [f"t{t}" for t in steps]
        plot_cka(across_b.numpy(), labels_b, labels_b, folder / "cka_blocks.png", f"linear CKA across blocks, t={t0}")
        plot_cka(across_t.numpy(), labels_t, labels_t, folder / "cka_timesteps.png", f"linear CKA across t, b={b0}")
        plot_cka(vs_random.numpy(), labels_b, [f"r{b}" for b in blocks], folder / "cka_random.png",
                 f"linear CKA: trained at t={t0} (rows) vs random-init at t={random_t} (columns)")
        return {"images": len(rows), "pool": sw.pool, "t": t0, "b": b0, "random_t": random_t, "blocks": blocks,
                "timesteps": steps, "across_blocks": across_b.tolist(), "across_timesteps": across_t.tolist(),
                "vs_random": vs_random.tolist()}

    # ----- driver
    def result(self, stage: str) -> dict[str, Any]:
        path = self.out / stage / "result.json"
        if not path.is_file():
            if stage not in self.cfg.run.stages:
                raise UserError(f"stage {stage!r} has not run in {self.out}: add it to run.stages")
            self.run_stage(stage)
        return json.loads(path.read_text())

    def run_stage(self, stage: str) -> dict[str, Any]:
        began = time.perf_counter()
        print(f"[study] {stage} ...", flush=True)

        def compute() -> dict[str, Any]:
            return {**getattr(self, f"stage_{stage}")(), "stage_seconds": time.perf_counter() - began}

        result = memo(self.out / stage / "result.json", compute)
        print(f"[study] {stage}: done ({result['stage_seconds']:.0f}s of computing)", flush=True)
        return result

    def run(self) -> dict[str, Any]:
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        for stage in STAGES:
            if stage in self.cfg.run.stages:
                self.run_stage(stage)
        done = {stage: json.loads((self.out / stage / "result.json").read_text()) for stage in STAGES
                if (self.out / stage / "result.json").is_file()}  # this call's stages and earlier ones
        write_report(self.out, done, self.cfg.to_dict(), self.model.num_blocks, self.model.num_encoder_blocks + 1)
        return done


def _timed_train(config: Path, seed: int, out: Path) -> dict[str, Any]:
    """One ``difrep train`` run; its test metrics, trained parameters and the seconds this call took (a resumed
    run: its last part), kept in the study's results so that they need no weights file."""
    began = time.perf_counter()
    metrics = train(load_config(config, [f"run.seed={seed}", f"run.out={out}"]))
    return {"top1": metrics["top1"], "top5": metrics["top5"], "parameters": metrics["parameters"],
            "seconds": time.perf_counter() - began}


def _slug(name: str) -> str:
    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in name.lower())).strip("-")


def plot_pools(rows: list[SweepRow], path: Path, title: str) -> None:
    """Test top-1 over blocks, one line per pool size (Figure 4's pooling panel)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    for pool in sorted({r.pool for r in rows}):
        mine = sorted((r for r in rows if r.pool == pool), key=lambda r: r.b)
        ax.plot([r.b for r in mine], [r.probe_test_top1 for r in mine], marker="o", ms=3, label=f"pool {pool}x{pool}")
    ax.set_xticks(sorted({r.b for r in rows}))
    ax.set_xlabel("block b")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or continue) the study into ``cfg.run.out``; returns each stage's result."""
    return Study(cfg).run()
