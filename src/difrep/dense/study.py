"""The scenes study: does UperNet on the shipped model's frozen features segment real garments?

On the Fashion-MNIST scenes (``difrep data make-scenes``), UperNet with the same decoder and budget is
trained on: the shipped ``adm-fmnist-28``'s frozen features at one block (t and b chosen on held-out
training scenes), the same with four blocks (Table 6's multi-block setting), a random-init copy of the
U-Net (frozen, the chosen t and b), and a small CNN (ResNet-18, random init) trained from pixels.
Every run is an engine run in its own folder, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.scenes import make_scenes
from ..errors import UserError
from ..models import create_model
from ..utils.files import file_sha256, weights_sha256
from .config import load_segmentation_config
from .task import train_segmentation

TIMESTEPS = (10, 50, 150)
BLOCKS = (10, 13, 16)  # the middle block and decoder blocks at 21 and 42 pixels (84-pixel input)
MULTI_BLOCKS = [19, 16, 13, 10]  # every third block from the middle, as Table 6's {33, 30, 27, 24}


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]


def claim_folder(out: Path, config: Path, settings: dict[str, Any]) -> None:
    """A study folder holds the runs of one protocol on one shipped model: a call with other settings, another
    config file or other shipped weights (a retrained model) is refused, naming what changed, rather than mixing
    runs. More seeds may be added."""
    record = {**settings, "config_sha256": file_sha256(config),
              "weights_sha256": weights_sha256(create_model("adm-fmnist-28", pretrained=True))}
    path = out / "study.json"
    if path.is_file():
        theirs = json.loads(path.read_text())
        changed = sorted(k for k in record.keys() | theirs.keys() if theirs.get(k) != record.get(k))
        if changed:
            raise UserError(f"{out} holds a study made with other settings (changed: {', '.join(changed)}): "
                            "use another --out, or the settings it was made with")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))


def run_once(config: Path, out: Path, overrides: Sequence[str], load: Callable[..., Any] = load_segmentation_config,
         train: Callable[[Any], dict[str, Any]] = train_segmentation) -> dict[str, Any]:
    """One engine run of the study, or its saved metrics when it finished before."""
    done = out / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    return train(load(config, [*overrides, f"run.out={out}", "run.progress=false", "run.tensorboard=false"]))


def run_scenes_study(scenes: str | Path, fashion_root: str | Path, out: str | Path, config: str | Path,
                     seeds: int = 3, iterations: int = 300, select_iterations: int = 150, max_test: int = 200,
                     heldout: int = 100, timesteps: Sequence[int] = TIMESTEPS,
                     blocks: Sequence[int] = BLOCKS) -> dict[str, Any]:
    """Select (t, b) on held-out training scenes, then train every variant for ``seeds`` seeds."""
    scenes, out, config = Path(scenes), Path(out), Path(config)
    claim_folder(out, config, {"task": "segmentation", "iterations": iterations, "select_iterations": select_iterations,
                               "max_test": max_test, "heldout": heldout, "timesteps": list(timesteps),
                               "blocks": list(blocks)})
    held = out / "heldout"
    make_scenes(fashion_root, held, "train", heldout, seed=1)  # new scenes of training garments
    base = [f"data.root={scenes}", f"optim.iterations={iterations}", f"run.log_every={iterations}",
            f"run.eval_every={iterations}", f"data.max_test={max_test}"]
    selection = []
    for t in timesteps:
        for b in blocks:
            metrics = run_once(config, out / "select" / f"t{t}_b{b}", [
                *base, f"optim.iterations={select_iterations}", f"run.log_every={select_iterations}",
                f"run.eval_every={select_iterations}", f"data.test_root={held}", "data.test_split=train",
                f"features.timesteps=[{t}]", f"features.blocks=[{b}]", "run.overlays=0"])
            selection.append({"t": t, "b": b, "heldout_mIoU": metrics["mIoU"]})
    best = max(selection, key=lambda r: r["heldout_mIoU"])
    chosen = [f"features.timesteps=[{best['t']}]", f"features.blocks=[{best['b']}]"]
    variants = [
        Variant(f"shipped U-Net, b = {best['b']}", tuple(chosen)),
        Variant(f"shipped U-Net, B = {{{', '.join(map(str, MULTI_BLOCKS))}}}",
                (f"features.timesteps=[{best['t']}]", f"features.blocks={MULTI_BLOCKS}")),
        Variant(f"random-init U-Net, b = {best['b']}", (*chosen, "model.pretrained=false")),
        Variant("ResNet-18 from pixels (fine-tuned)", ("model.name=timm:resnet18", 'model.flags={image_size: 84}',
                                                       "model.pretrained=false", "features.blocks=[1,2,3,4]",
                                                       "run.finetune=true")),
    ]
    results: dict[tuple[int, int], dict[str, Any]] = {}
    for seed in range(seeds):  # every variant's first seed before any second one: a cut-short study still compares
        for i, v in enumerate(variants):
            results[i, seed] = run_once(config, out / "final" / f"variant{i}_seed{seed}",
                                    [*base, *v.overrides, f"run.seed={seed}", f"run.overlays={4 if seed == 0 else 0}"])
    rows = []
    for i, v in enumerate(variants):
        runs = [results[i, seed] for seed in range(seeds)]
        values = [r["mIoU"] for r in runs]
        mean, std = mean_std(values)
        rows.append({"variant": v.name, "folder": f"final/variant{i}_seed*", "mIoU": values, "mean": mean, "std": std,
                     "aAcc": statistics.mean(r["aAcc"] for r in runs)})
    summary = {"selection": selection, "chosen": best, "results": rows, "iterations": iterations,
               "test_scenes": max_test, "heldout_scenes": heldout, "seeds": seeds}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_results(summary, out / "results.png")
    return summary


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean over seeds and their sample standard deviation (0 for a single seed)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def draw_seeds(ax: Any, per_seed: Sequence[Sequence[float]]) -> list[int]:
    """Horizontal bars, the first variant on top: the mean over seeds with its spread, each seed as a dot.
    Returns the bars' y positions."""
    y = list(range(len(per_seed)))[::-1]
    spreads = [mean_std(values) for values in per_seed]
    ax.barh(y, [m for m, _ in spreads], xerr=[s for _, s in spreads], color="#9ab", capsize=3)
    for yi, values in zip(y, per_seed):
        ax.plot(values, [yi] * len(values), "k.", ms=4)
    return y


def plot_results(summary: dict[str, Any], path: Path) -> Path:
    """Test mIoU of every variant: the mean over seeds with each seed's value as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["results"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    y = draw_seeds(ax, [r["mIoU"] for r in rows])
    ax.set_yticks(y, [r["variant"] for r in rows])
    ax.set_xlabel(f"test mIoU (%), {summary['test_scenes']} scenes, {summary['seeds']} seeds")
    ax.set_title(f"UperNet on the scenes, {summary['iterations']} iterations of batch 8", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
