"""The scenes detection study: does Mask R-CNN on the shipped model's frozen features find the garments?

On the COCO layout of the Fashion-MNIST scenes, Mask R-CNN with the same pyramid, heads and budget is
trained on the shipped ``adm-fmnist-28``'s frozen features and on a random-init copy's, at the noise step
and block the segmentation study chose on held-out training scenes (``t``, ``block``), for several seeds.
Every run is an engine run in its own folder, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .detection_config import load_detection_config
from .detection_task import train_detection
from .study import Variant, claim_folder, draw_seeds, mean_std, run_once

METRICS = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")


def run_detection_study(scenes: str | Path, out: str | Path, config: str | Path, seeds: int = 3,
                        iterations: int = 400, max_test: int = 200, t: int = 50, block: int = 13) -> dict[str, Any]:
    """Train both variants for ``seeds`` seeds (every variant's first seed before any second one)."""
    scenes, out, config = Path(scenes), Path(out), Path(config)
    claim_folder(out, config, {"task": "detection", "iterations": iterations, "max_test": max_test, "t": t,
                               "block": block})
    base = [f"data.root={scenes}", f"optim.iterations={iterations}", f"run.log_every={max(iterations // 4, 1)}",
            f"run.eval_every={iterations}", f"data.max_test={max_test}", f"features.timesteps=[{t}]",
            f"features.blocks=[{block}]"]
    variants = [Variant(f"shipped U-Net, b = {block}", ()),
                Variant(f"random-init U-Net, b = {block}", ("model.pretrained=false",))]
    results: dict[tuple[int, int], dict[str, Any]] = {}
    for seed in range(seeds):
        for i, v in enumerate(variants):
            results[i, seed] = run_once(config, out / f"variant{i}_seed{seed}",
                                    [*base, *v.overrides, f"run.seed={seed}", f"run.draw={4 if seed == 0 else 0}"],
                                    load_detection_config, train_detection)
    rows = []
    for i, v in enumerate(variants):
        runs = [results[i, seed] for seed in range(seeds)]
        row: dict[str, Any] = {"variant": v.name, "folder": f"variant{i}_seed*"}
        for name in METRICS:
            values = [r[name] for r in runs]
            row[name] = values
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values)
        rows.append(row)
    summary = {"results": rows, "iterations": iterations, "test_scenes": max_test, "seeds": seeds, "t": t,
               "block": block}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_detection_results(summary, out / "results.png")
    return summary


def plot_detection_results(summary: dict[str, Any], path: Path) -> Path:
    """Box and mask AP of every variant: the mean over seeds with each seed's value as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["results"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.4), sharey=True)
    for ax, name, title in zip(axes, ("bbox_AP", "segm_AP"), ("box AP", "mask AP")):
        y = draw_seeds(ax, [r[name] for r in rows])
        ax.set_xlabel(f"{title} (%), {summary['test_scenes']} scenes, {summary['seeds']} seeds")
    axes[0].set_yticks(y, [r["variant"] for r in rows])
    fig.suptitle(f"Mask R-CNN on the scenes, {summary['iterations']} iterations, t = {summary['t']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
