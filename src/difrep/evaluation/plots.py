"""Figures: sweep heatmaps (t x b, like Figures 3-4) and CKA matrices (like Figure 5).

Figures are drawn on matplotlib's ``Figure`` objects, not pyplot, so that importing difrep never
changes the caller's matplotlib backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .sweep import SweepRow


def _heatmap(ax, values: np.ndarray, rows: Sequence, cols: Sequence, fmt: str, cmap: str, mark=None) -> None:
    image = ax.imshow(values, cmap=cmap, aspect="auto", origin="lower")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] < np.nanmean(values) else "black")
    if mark is not None:
        ax.add_patch(Rectangle((mark[1] - 0.5, mark[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.figure.colorbar(image, ax=ax)


def plot_sweep(rows: list[SweepRow], best: SweepRow, path: str | Path, metric: str = "probe_val_top1",
               title: str = "") -> None:
    """One t x b heatmap of ``metric`` per pool size; the recommended cell is framed in red."""
    pools = sorted({r.pool for r in rows})
    ts, bs = sorted({r.t for r in rows}), sorted({r.b for r in rows})
    fig = Figure(figsize=(1.0 + 0.9 * len(ts) * len(pools), 0.5 * len(bs) + 1.8))
    axes = fig.subplots(1, len(pools), squeeze=False)
    for ax, pool in zip(axes[0], pools):
        grid = np.full((len(bs), len(ts)), np.nan)
        for r in rows:
            if r.pool == pool:
                grid[bs.index(r.b), ts.index(r.t)] = getattr(r, metric)
        mark = (bs.index(best.b), ts.index(best.t)) if best.pool == pool else None
        _heatmap(ax, grid, bs, ts, ".1f", "viridis", mark)
        ax.set_xlabel("noise step t")
        ax.set_ylabel("block b")
        ax.set_title(f"pool {pool}x{pool}")
    fig.suptitle(title or metric.replace("_", " "))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_search(scored: Sequence, best, path: str | Path, title: str = "") -> None:
    """The held-out surface an automatic search saw: one t x b heatmap per pool, each setting at the largest
    subset it was scored on (the number under its accuracy: fitting images), blank where never scored."""
    last: dict[tuple[int, int, int], object] = {}
    for s in scored:
        key = (s.t, s.b, s.pool)
        if key not in last or s.fit_images >= last[key].fit_images:
            last[key] = s
    pools = sorted({k[2] for k in last})
    ts, bs = sorted({k[0] for k in last}), sorted({k[1] for k in last})
    fig = Figure(figsize=(1.0 + 1.0 * len(ts) * len(pools), 0.55 * len(bs) + 1.8))
    axes = fig.subplots(1, len(pools), squeeze=False)
    for ax, pool in zip(axes[0], pools):
        grid = np.full((len(bs), len(ts)), np.nan)
        for (t, b, p), s in last.items():
            if p == pool:
                grid[bs.index(b), ts.index(t)] = s.held_out_top1
        image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
        for (t, b, p), s in last.items():
            if p == pool:
                ax.text(ts.index(t), bs.index(b), f"{s.held_out_top1:.1f}\n{s.fit_images}", ha="center",
                        va="center", fontsize=5.5, color="white" if s.held_out_top1 < np.nanmean(grid) else "black")
        if best.pool == pool:
            ax.add_patch(Rectangle((ts.index(best.t) - 0.5, bs.index(best.b) - 0.5), 1, 1, fill=False,
                                   edgecolor="red", linewidth=2))
        ax.set_xticks(range(len(ts)), [str(t) for t in ts])
        ax.set_yticks(range(len(bs)), [str(b) for b in bs])
        ax.set_xlabel("noise step t")
        ax.set_ylabel("block b")
        ax.set_title(f"pool {pool}x{pool}")
        fig.colorbar(image, ax=ax)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_cka(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: str | Path, title: str = "") -> None:
    fig = Figure(figsize=(1.2 + 0.6 * len(cols), 1.0 + 0.5 * len(rows)))
    ax = fig.subplots()
    _heatmap(ax, matrix, rows, cols, ".2f", "magma")
    ax.set_title(title or "linear CKA")
    for label in ax.get_xticklabels():
        label.set_rotation(45)
        label.set_horizontalalignment("right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_loss_curve(csv_path: str | Path, path: str | Path, title: str = "") -> None:
    """The pretraining log (loss.csv): L_simple and the VB term against the step, log scale."""
    import csv

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key, label in (("mse", "L_simple (eps MSE)"), ("vb", "L_vlb term (bits/dim)")):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            ax.plot(steps[: len(values)], values, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(title or "pretraining loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
