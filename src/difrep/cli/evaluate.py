"""``difrep probe``, ``difrep knn``, ``difrep cka``: evaluations on feature caches."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..evaluation import cka_matrix, knn_accuracy, lbfgs_logistic_probe, sgd_linear_probe
from ..evaluation.metrics import count_classes
from ..evaluation.plots import plot_cka
from ..features.cache import FeatureCache, FeatureKey
from .common import int_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="linear probe on cached features")
    p.add_argument("--train", required=True, help="cache folder of the training split")
    p.add_argument("--test", required=True, help="cache folder of the test split")
    p.add_argument("--key", required=True, help="feature, e.g. t150_b24_p2")
    p.add_argument("--solver", choices=["sgd", "adam", "lbfgs"], default="sgd",
                   help="sgd: the paper's linear probe (28 epochs, StepLR 7 x 0.1, raw features); adam: the paper "
                   "text's variant; lbfgs: L2-regularised logistic regression on standardised features, run to "
                   "convergence (fast, deterministic; not the paper's protocol)")
    p.add_argument("--standardize", action="store_true",
                   help="sgd/adam: standardise every feature dimension with training statistics first "
                   "(not the paper's protocol)")
    p.add_argument("--epochs", type=int, default=28)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the result as JSON")
    p.set_defaults(run=run_probe)

    p = sub.add_parser("knn", help="weighted kNN on cached features (Table 9 protocol)")
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--k", type=int_list, default=[20, 200])
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--out", help="write the result as JSON")
    p.set_defaults(run=run_knn)

    p = sub.add_parser("cka", help="linear CKA between cached features (Figure 5)",
                       description="Rows: features of --cache; columns: those of --vs (default the same cache). "
                       "Select with --keys, or with --t (across blocks) / --b (across timesteps).")
    p.add_argument("--cache", required=True)
    p.add_argument("--vs", help="another cache of the same images (another backbone, say)")
    p.add_argument("--keys", help="comma-separated keys of --cache")
    p.add_argument("--vs-keys", help="comma-separated keys of --vs")
    p.add_argument("--t", type=int, help="keep the keys at this noise step (CKA across blocks)")
    p.add_argument("--b", type=int, help="keep the keys at this block (CKA across timesteps)")
    p.add_argument("--batch-size", type=int, help="unbiased minibatch estimate with this batch size (default: exact)")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.csv and PREFIX.png")
    p.set_defaults(run=run_cka)


def _pair(args: argparse.Namespace) -> tuple[FeatureCache, FeatureCache, FeatureKey]:
    train, test = FeatureCache(args.train), FeatureCache(args.test)
    return train, test, FeatureKey.parse(args.key)


def _report(result: dict, out: str | None) -> None:
    print(json.dumps(result, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2))


def run_probe(args: argparse.Namespace, extra: list[str]) -> int:
    train, test, key = _pair(args)
    x, y = train.features(key).to_tensor(), train.labels
    xt, yt = test.features(key).to_tensor(), test.labels
    classes = count_classes(y, yt)
    if args.solver == "lbfgs":
        res = lbfgs_logistic_probe(x, y, xt, yt, classes, seed=args.seed)
    else:
        res = sgd_linear_probe(x, y, xt, yt, classes, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               optimizer=args.solver, standardize=args.standardize, seed=args.seed)
    _report({"key": key.name, "solver": args.solver, "top1": res.top1, "top5": res.top5,
             "details": {str(k): v for k, v in res.details.items()}, "train": args.train, "test": args.test}, args.out)
    return 0


def run_knn(args: argparse.Namespace, extra: list[str]) -> int:
    train, test, key = _pair(args)
    y, yt = train.labels, test.labels
    acc = knn_accuracy(train.features(key).to_tensor(), y, test.features(key).to_tensor(), yt,
                       count_classes(y, yt), ks=args.k, temperature=args.temperature)
    _report({"key": key.name, "temperature": args.temperature,
             **{f"k{k}": {"top1": v[1], "top5": v[5]} for k, v in acc.items()}}, args.out)
    return 0


def _select(cache: FeatureCache, keys: str | None, t: int | None, b: int | None) -> list[FeatureKey]:
    if keys:
        return [FeatureKey.parse(k) for k in keys.split(",")]
    chosen = [k for k in cache.keys if (t is None or k.t == t) and (b is None or k.b == b)]
    if not chosen:
        raise UserError(f"no key of {cache.folder} matches t={t} b={b}")
    return chosen


def run_cka(args: argparse.Namespace, extra: list[str]) -> int:
    rows_cache = FeatureCache(args.cache)
    cols_cache = FeatureCache(args.vs) if args.vs else rows_cache
    if not np.array_equal(rows_cache.indices.numpy(), cols_cache.indices.numpy()):
        raise UserError(f"{args.cache} and {args.vs} do not hold the same images in the same order")
    row_keys = _select(rows_cache, args.keys, args.t, args.b)
    col_keys = _select(cols_cache, args.vs_keys, args.t if not args.vs else None, args.b if not args.vs else None) \
        if (args.vs_keys or not args.vs) else list(cols_cache.keys)
    xs = [rows_cache.features(k).to_tensor() for k in row_keys]
    ys = [cols_cache.features(k).to_tensor() for k in col_keys]
    matrix = cka_matrix(xs, ys, batch_size=args.batch_size).numpy()
    names_r, names_c = [k.name for k in row_keys], [k.name for k in col_keys]
    with open(f"{args.out}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", *names_c])
        for name, values in zip(names_r, matrix):
            writer.writerow([name, *[f"{v:.4f}" for v in values]])
    plot_cka(matrix, names_r, names_c, f"{args.out}.png")
    print(f"wrote {args.out}.csv and {args.out}.png ({len(names_r)} x {len(names_c)})")
    return 0
