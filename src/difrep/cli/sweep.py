"""``difrep sweep``: choose (t, b, pool) on held-out training images, over the whole grid or by an automatic search."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..distributed import init_distributed
from ..errors import UserError
from ..evaluation.plots import plot_search, plot_sweep
from ..evaluation.search import SearchResult, SearchSpace, best_values, search_settings
from ..evaluation.sources import CachedSource, ExtractingSource
from ..evaluation.sweep import write_csv
from ..features.cache import FeatureCache
from ..features.pictures import write_class_pictures
from .common import add_data_args, add_model_args, build_dataset, build_model, model_description
from .extract import add_extract_args, extract_split, resolve_timesteps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="choose the best (t, b, pool): the whole grid or an automatic search",
                       description="--search grid (default): extract the train and test splits once (all blocks "
                       "in one pass per timestep batch) and score every (t, b, pool) with a linear probe and kNN. "
                       "--search auto: successive halving over growing image subsets, extracting only what the "
                       "settings still in the running need. Either way the setting is chosen on a held-out part "
                       "of the training split; the test split is only reported. Writes choice.json and sweep.csv.")
    add_model_args(p)
    add_data_args(p)
    add_extract_args(p)
    p.add_argument("--test-split", default="test")
    p.add_argument("--test-per-class", type=int, help="images a class of the test split (default: --per-class)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--solver", choices=["sgd", "lbfgs"], default="sgd",
                   help="sgd: the paper's linear probe (28 epochs, StepLR 7 x 0.1); lbfgs: L2-regularised logistic "
                   "regression run to convergence (faster on a CPU; not the paper's protocol)")
    p.add_argument("--search", choices=["grid", "auto"], default="grid",
                   help="grid: score every setting on every image; auto: successive halving (docs/evaluation.md)")
    p.add_argument("--first-per-class", type=int, default=20, help="auto: fitting images a class at the first rung")
    p.add_argument("--growth", type=float, default=3.0, help="auto: subset growth from rung to rung")
    p.add_argument("--keep", type=float, default=1 / 3, help="auto: fraction of the settings kept at each rung")
    p.add_argument("--out", required=True, help="output folder (choice.json, sweep.csv, PNGs; caches with grid)")
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    start = time.perf_counter()
    rank, world, device = init_distributed()
    model = build_model(args, extra).to(device)
    resolve_timesteps(args, model)
    space = SearchSpace(tuple(args.timesteps), tuple(model.validate_blocks(args.blocks)), tuple(args.pool))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test_per_class = args.test_per_class or args.per_class
    options = {"solver": args.solver, "val_fraction": args.val_fraction, "seed": args.seed}
    if args.search == "grid":
        model_info = model_description(args, model)
        passes = sum(extract_split(args, model, model_info, split, str(out / name), rank, world, device, per_class)
                     for split, name, per_class in (("train", "cache-train", args.per_class),
                                                    (args.test_split, "cache-test", test_per_class)))
        if rank != 0:
            return 0
        test_data, _ = build_dataset(args, args.test_split, model.image_size, test_per_class)
        train, test = CachedSource(FeatureCache(out / "cache-train")), CachedSource(FeatureCache(out / "cache-test"))
        result = search_settings(train, test, space, mode="grid", **options)
        result.choice["forward_passes"] = passes * len(args.timesteps) * args.noise_draws
    else:
        if world > 1:
            raise UserError("--search auto runs in one process (its first rungs are small): run it without torchrun")
        if 0 in args.pool:
            raise UserError("--search auto pools every feature map: give --pool sizes >= 1")
        train_data, _ = build_dataset(args, "train", model.image_size)
        test_data, _ = build_dataset(args, args.test_split, model.image_size, test_per_class)
        common = {"seed": args.seed, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
                  "workers": args.workers, "device": device}
        train_source = ExtractingSource(model, train_data, **common)
        result = search_settings(train_source, ExtractingSource(model, test_data, **common), space, mode="auto",
                                 first_per_class=args.first_per_class, growth=args.growth, keep=args.keep, **options)
    result.choice["seconds"] = round(time.perf_counter() - start, 2)
    result.choice.update({"model": args.model, "checkpoint": args.checkpoint, "data": args.data,
                          "final": asdict(result.final)})
    write_outputs(result, out, f"{args.model} on {args.data}")
    draw_best(model, test_data, result, out / "pictures.png", f"{args.model} on {args.data}")
    _print(result)
    return 0


def draw_best(model: torch.nn.Module, data: Dataset, result: SearchResult, path: Path, title: str) -> None:
    """Feature pictures of the three best t at the chosen b by the three best b at the chosen t."""
    ranking, c = result.ranking(), result.choice
    timesteps = best_values(ranking, "t", 3, b=c["block"], pool=c["pool"])
    blocks = best_values(ranking, "b", 3, t=c["timestep"], pool=c["pool"])
    write_class_pictures(model, data, timesteps, blocks, path, title=title)


def write_outputs(result: SearchResult, out: Path, title: str) -> None:
    """choice.json, sweep.csv and the held-out surface (grid: also its test surface)."""
    (out / "choice.json").write_text(json.dumps(result.choice, indent=2))
    if result.grid_rows:
        write_csv(result.grid_rows, out / "sweep.csv")
        plot_sweep(result.grid_rows, result.final, out / "heatmap_probe_val.png", "probe_val_top1",
                   f"{title}: held-out probe top-1 (%)")
        plot_sweep(result.grid_rows, result.final, out / "heatmap_probe_test.png", "probe_test_top1",
                   f"{title}: test probe top-1 (%)")
        plot_sweep(result.grid_rows, result.final, out / "heatmap_knn_test.png", "knn20_test_top1",
                   f"{title}: test kNN (k=20) top-1 (%)")
    else:
        write_csv(result.scored, out / "sweep.csv")
        plot_search(result.scored, result.final, out / "surface_held_out.png",
                    f"{title}: held-out top-1 (%) the search saw, at the largest subset each setting reached")


def _print(result: SearchResult) -> None:
    c = result.choice
    print(f"{'t':>5} {'b':>3} {'pool':>4} {'images':>6} {'held-out':>8}")
    last = {}
    for s in result.scored:
        last[(s.t, s.b, s.pool)] = s
    for key in result.ranking()[:10]:
        s = last[(key.t, key.b, key.pool)]
        print(f"{s.t:>5} {s.b:>3} {s.pool:>4} {s.fit_images:>6} {s.held_out_top1:8.1f}")
    print(f"{c['search']}: t={c['timestep']} b={c['block']} pool={c['pool']}: held-out {c['held_out_top1']:.1f}%, "
          f"test top-1 {c['test_top1']:.1f}%; {c['settings_scored']} settings scored of {c['grid_settings']}, "
          f"{c['forward_passes']} forward passes, {c['seconds']:.0f} s")
