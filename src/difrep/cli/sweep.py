"""``difrep sweep``: the t x b x pool grid, extracted once and probed, with heatmaps and a recommendation."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ..distributed import init_distributed
from ..evaluation.plots import plot_sweep
from ..evaluation.sweep import best_row, run_sweep, write_csv
from ..features.cache import FeatureCache
from .common import add_data_args, add_model_args, build_model, model_description
from .extract import add_extract_args, extract_split, resolve_timesteps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="probe every (t, b, pool) and recommend the best",
                       description="Extract the train and test splits once (all blocks in one pass per "
                       "timestep batch), then fit a linear probe and a kNN per (t, b, pool). The best "
                       "setting is chosen on a held-out part of the training split.")
    add_model_args(p)
    add_data_args(p)
    add_extract_args(p)
    p.add_argument("--test-split", default="test")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--solver", choices=["sgd", "lbfgs"], default="sgd",
                   help="sgd: the paper's linear probe (28 epochs, StepLR 7 x 0.1); lbfgs: L2-regularised logistic "
                   "regression run to convergence (faster on a CPU; not the paper's protocol)")
    p.add_argument("--out", required=True, help="output folder (caches, sweep.csv, heatmap PNGs, summary.json)")
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    rank, world, device = init_distributed()
    model = build_model(args, extra).to(device)
    resolve_timesteps(args, model)
    out = Path(args.out)
    model_info = model_description(args, model)
    for split, name in (("train", "cache-train"), (args.test_split, "cache-test")):
        extract_split(args, model, model_info, split, str(out / name), rank, world, device)
    if rank != 0:
        return 0
    rows = run_sweep(FeatureCache(out / "cache-train"), FeatureCache(out / "cache-test"),
                     val_fraction=args.val_fraction, seed=args.seed, solver=args.solver)
    best = best_row(rows)
    write_csv(rows, out / "sweep.csv")
    plot_sweep(rows, best, out / "heatmap_probe_val.png", "probe_val_top1",
               f"{args.model} on {args.data}: held-out probe top-1 (%)")
    plot_sweep(rows, best, out / "heatmap_probe_test.png", "probe_test_top1",
               f"{args.model} on {args.data}: test probe top-1 (%)")
    plot_sweep(rows, best, out / "heatmap_knn_test.png", "knn20_test_top1",
               f"{args.model} on {args.data}: test kNN (k=20) top-1 (%)")
    summary = {"recommended": asdict(best), "chosen_on": "held-out part of the training split", "solver": args.solver,
               "rows": len(rows), "model": args.model, "checkpoint": args.checkpoint, "data": args.data}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'t':>5} {'b':>3} {'pool':>4} {'val':>6} {'test':>6} {'knn20':>6}")
    for r in sorted(rows, key=lambda r: -r.probe_val_top1)[:10]:
        print(f"{r.t:>5} {r.b:>3} {r.pool:>4} {r.probe_val_top1:6.1f} {r.probe_test_top1:6.1f} {r.knn20_test_top1:6.1f}")
    print(f"recommended (held-out): t={best.t} b={best.b} pool={best.pool}: test top-1 {best.probe_test_top1:.1f}%")
    return 0
