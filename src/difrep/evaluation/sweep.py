"""The t x b x pool sweep of the paper's Figures 3 and 4, on feature caches.

Every (t, b, pool) is probed (the paper's SGD linear probe by default, or L-BFGS logistic
regression with ``solver="lbfgs"``, faster on a CPU) and kNN-evaluated. The recommendation uses a
held-out, class-balanced part of the training split, never the test split; test accuracies are
reported beside it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..features.cache import FeatureCache, FeatureKey
from .knn import knn_accuracy
from .linear import LinearProbe, LogisticProbe, fit_logistic_probe, fit_sgd_linear_probe
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
    fit_images: int | None = None  # the images the probe learnt from


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
    return score_setting(key, train.features(key).to_tensor(), train.labels, test.features(key).to_tensor(),
                         test.labels, fit, val_idx, solver, l2_grid, max_iter, seed, probe_options)


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, solver: str = "sgd",
              l2_grid: tuple[float, ...] = (1e-4, 1e-2), max_iter: int = 100, seed: int = 0,
              probe_options: dict[str, Any] | None = None) -> tuple[LinearProbe | LogisticProbe, float | None]:
    """The sweep's probe on features [N, D]: "sgd" (the paper's linear probe) or "lbfgs" (logistic regression,
    L2 from ``l2_grid``); returns the probe and its L2 strength (None for SGD)."""
    if solver == "lbfgs":
        logistic = fit_logistic_probe(x, y, num_classes, l2_grid, max_iter=max_iter, seed=seed)
        return logistic, logistic.l2
    if solver == "sgd":
        return fit_sgd_linear_probe(x, y, num_classes, seed=seed, **(probe_options or {})), None
    raise UserError(f"solver={solver!r}: use 'sgd' (the paper's linear probe) or 'lbfgs'")


def score_setting(
    key: FeatureKey,
    x: torch.Tensor,
    y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    fit: torch.Tensor,
    val_idx: torch.Tensor,
    solver: str = "sgd",
    l2_grid: tuple[float, ...] = (1e-4, 1e-2),
    max_iter: int = 100,
    seed: int = 0,
    probe_options: dict[str, Any] | None = None,
) -> SweepRow:
    """:func:`sweep_row` on feature tensors: ``x`` [N, D] of the training split (``fit`` selects the rows the
    probe learns from, ``val_idx`` the held-out ones), ``test_x`` of the test split."""
    num_classes = count_classes(y, test_y)
    probe, l2 = fit_probe(x[fit], y[fit], num_classes, solver, l2_grid, max_iter, seed, probe_options)
    val_acc, test_acc = probe.accuracy(x[val_idx], y[val_idx]), probe.accuracy(test_x, test_y)
    knn_val = knn_accuracy(x[fit], y[fit], x[val_idx], y[val_idx], num_classes, ks=(20,))
    knn_test = knn_accuracy(x, y, test_x, test_y, num_classes, ks=(20,))
    fit_images = int(fit.sum()) if fit.dtype == torch.bool else len(fit)
    return SweepRow(key.t, key.b, key.pool, x.shape[1], val_acc[1], test_acc[1], test_acc[5],
                    knn_val[20][1], knn_test[20][1], l2, fit_images)


def best_row(rows: list[SweepRow]) -> SweepRow:
    """The recommendation: highest held-out probe accuracy (ties: higher kNN, then smaller features)."""
    return max(rows, key=lambda r: (round(r.probe_val_top1, 6), round(r.knn20_val_top1, 6), -r.dim))


def write_csv(rows: Sequence[Any], path: str | Path) -> None:
    """Dataclass rows (sweep cells, search scores) as CSV, one line each, floats to 4 decimals."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(row).items()})
