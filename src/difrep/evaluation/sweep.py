"""The t x b x pool sweep of the paper's Figures 3 and 4, on feature caches.

Every (t, b, pool) is probed (the paper's SGD linear probe by default, or L-BFGS logistic
regression with ``solver="lbfgs"``, faster on a CPU) and kNN-evaluated. The recommendation uses a
held-out, class-balanced part of the training split, never the test split; test accuracies are
reported beside it.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.subsets import held_out_split
from ..errors import UserError
from ..features.cache import FeatureCache, FeatureKey
from .knn import knn_accuracy
from .linear import fit_logistic_probe, fit_sgd_linear_probe
from .metrics import count_classes


@dataclass
class SweepRow:
    t: int
    b: int
    pool: int
    dim: int
    probe_val_top1: float
    probe_test_top1: float
    probe_test_top5: float
    knn20_val_top1: float
    knn20_test_top1: float
    l2: float | None


def run_sweep(
    train: FeatureCache,
    test: FeatureCache,
    val_fraction: float = 0.1,
    l2_grid: tuple[float, ...] = (1e-4, 1e-2),
    max_iter: int = 100,
    seed: int = 0,
    progress: bool = True,
    solver: str = "sgd",
) -> list[SweepRow]:
    """Probe and kNN for every key the two caches share. ``solver``: "sgd" (the paper's linear probe,
    :func:`~difrep.evaluation.linear.fit_sgd_linear_probe`) or "lbfgs" (logistic regression with the L2
    strength chosen from ``l2_grid``; ``l2`` is None in the rows of the SGD probe)."""
    keys = [k for k in train.keys if k in set(test.keys)]
    if not keys:
        raise UserError(f"the caches {train.folder} and {test.folder} share no (t, b, pool)")
    fit, val_idx = held_out_split(train.labels, val_fraction, seed)
    return [sweep_row(train, test, key, fit, val_idx, solver=solver, l2_grid=l2_grid, max_iter=max_iter, seed=seed)
            for key in tqdm(keys, desc="sweep", disable=not progress)]


def sweep_row(
    train: FeatureCache,
    test: FeatureCache,
    key: FeatureKey,
    fit: torch.Tensor,
    val_idx: torch.Tensor,
    solver: str = "sgd",
    l2_grid: tuple[float, ...] = (1e-4, 1e-2),
    max_iter: int = 100,
    seed: int = 0,
    probe_options: dict[str, Any] | None = None,
) -> SweepRow:
    """One cell of the sweep: the probe fitted on the ``fit`` rows of the training features, scored on the
    held-out rows ``val_idx`` and on the test split, and kNN (k = 20) likewise. ``probe_options`` go to
    :func:`~difrep.evaluation.linear.fit_sgd_linear_probe` (epochs, lr, batch_size, ...)."""
    if solver not in ("sgd", "lbfgs"):
        raise UserError(f"solver={solver!r}: use 'sgd' (the paper's linear probe) or 'lbfgs'")
    train_y, test_y = train.labels, test.labels
    num_classes = count_classes(train_y, test_y)
    x, xt = train.features(key).to_tensor(), test.features(key).to_tensor()
    if solver == "lbfgs":
        logistic = fit_logistic_probe(x[fit], train_y[fit], num_classes, l2_grid, max_iter=max_iter, seed=seed)
        probe, l2 = logistic, logistic.l2
    else:
        probe = fit_sgd_linear_probe(x[fit], train_y[fit], num_classes, seed=seed, **(probe_options or {}))
        l2 = None
    val_acc, test_acc = probe.accuracy(x[val_idx], train_y[val_idx]), probe.accuracy(xt, test_y)
    knn_val = knn_accuracy(x[fit], train_y[fit], x[val_idx], train_y[val_idx], num_classes, ks=(20,))
    knn_test = knn_accuracy(x, train_y, xt, test_y, num_classes, ks=(20,))
    return SweepRow(key.t, key.b, key.pool, x.shape[1], val_acc[1], test_acc[1], test_acc[5],
                    knn_val[20][1], knn_test[20][1], l2)


def best_row(rows: list[SweepRow]) -> SweepRow:
    """The recommendation: highest held-out probe accuracy (ties: higher kNN, then smaller features)."""
    return max(rows, key=lambda r: (round(r.probe_val_top1, 6), round(r.knn20_val_top1, 6), -r.dim))


def write_csv(rows: list[SweepRow], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(row).items()})
