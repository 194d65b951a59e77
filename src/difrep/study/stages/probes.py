"""The ``knn`` and ``pixels`` stages: kNN on globally pooled features at the chosen t (Table 9), and the probe and
kNN on raw pixels (the control every feature must beat)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ...evaluation.knn import knn_accuracy
from ...evaluation.linear import fit_logistic_probe, fit_sgd_linear_probe
from ...features.cache import FeatureKey
from ..context import StudyContext
from .base import Result, Score, Stage, memo, table
from .sweep import SGD_OPTIONS, probe_settings


class KnnStage(Stage):
    kind = "knn"
    title = "kNN on globally pooled features (Table 9)"
    defaults: ClassVar[dict[str, Any]] = {"model": "trained", "timestep": None, "blocks": None, "ks": [20, 200]}

    def run(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result:
        s = self.settings
        model = ctx.model(s["model"])
        blocks = s["blocks"] or list(range(1, model.num_blocks + 1))
        train, test = ctx.feature_pair(s["model"], [s["timestep"]], blocks, [1])
        classes = int(train.labels.max()) + 1
        rows = []
        for b in sorted(set(blocks)):
            key = FeatureKey(s["timestep"], b, 1)
            acc = knn_accuracy(train.features(key).to_tensor(), train.labels, test.features(key).to_tensor(),
                               test.labels, classes, ks=s["ks"])
            rows.append({"t": key.t, "b": b, "pool": 1, **{f"k{k}_top{n}": acc[k][n] for k in s["ks"] for n in (1, 5)}})
        return {"model": s["model"], "t": s["timestep"], "rows": rows}

    def report(self, result: Result, folder: str) -> list[str]:
        rows = result["rows"]
        ks = ks_of(rows)
        return [f"t={result['t']}, test images against all training images.", "",
                *table(["b", *[f"top-{n} @{k}" for k in ks for n in (1, 5)]],
                       [[x["b"], *[f"{x[f'k{k}_top{n}']:.1f}" for k in ks for n in (1, 5)]] for x in rows])]


def ks_of(rows: list[dict[str, Any]]) -> list[int]:
    """The k of a kNN table's columns (``k20_top1`` ...)."""
    return sorted({int(key[1:].split("_")[0]) for key in rows[0] if key.startswith("k") and "_top" in key})


class PixelsStage(Stage):
    kind = "pixels"
    title = "Raw pixels under the same probe and kNN"
    defaults: ClassVar[dict[str, Any]] = {"probe": {}, "ks": [20]}

    def run(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result:
        probe = probe_settings(self.settings["probe"], self.where("probe"))
        ks = sorted(set(self.settings["ks"]))

        def compute() -> Result:
            (x, y), (xt, yt) = (ctx.grey_images(split) for split in ("train", "test"))
            x, xt = x.flatten(1), xt.flatten(1)
            fit, val = ctx.held_out(y)
            classes = int(y.max()) + 1
            if probe["solver"] == "lbfgs":
                fitted: Any = fit_logistic_probe(x[fit], y[fit], classes, (1e-4, 1e-2), max_iter=100)
            else:
                fitted = fit_sgd_linear_probe(x[fit], y[fit], classes, seed=0, **{k: probe[k] for k in SGD_OPTIONS})
            acc = knn_accuracy(x, y, xt, yt, classes, ks=ks)
            test = fitted.accuracy(xt, yt)
            return {"dim": x.shape[1], "solver": probe["solver"], "probe_val_top1": fitted.accuracy(x[val], y[val])[1],
                    "probe_test_top1": test[1], "probe_test_top5": test[5],
                    **{f"k{k}_top{n}": acc[k][n] for k in ks for n in (1, 5)}}

        return memo(folder / "pixels.json", compute)

    def report(self, result: Result, folder: str) -> list[str]:
        k = min(ks_of([result]))
        return table(["features", "probe held-out", "probe test", f"kNN k={k} test"],
                     [[f"raw pixels ({result['dim']} values)", f"{result['probe_val_top1']:.1f}",
                       f"{result['probe_test_top1']:.1f}", f"{result[f'k{k}_top1']:.1f}"]])

    def score(self, result: Result, selector: str, metric: str | None) -> Score | None:
        return Score("pixels", (float(result[metric or "probe_test_top1"]),))
