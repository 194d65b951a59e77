"""The ``train`` stage: engine runs (``difrep train``) for every run and seed, classification heads or dense tasks.

Each run's config is written beside its folders (``STAGE/<id>.yaml``), so ``difrep train STAGE/<id>.yaml
run.seed=S`` repeats any number of the report. A run is the stage's ``base`` sections with the run's ``config``
on top (over the ``config`` file for dense tasks). Classification runs also get the study's model and data;
``cached: true`` runs train on a feature cache of their images (made once for the stage), ``probe: lbfgs`` runs
are L-BFGS logistic regression on that cache, ``percent: P`` runs learn from P% of the labels. With ``grid``,
the stage trains one run per (t, b), one seed, and chooses the best by ``metric``: a selection stage.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ...dense import load_detection_config, load_segmentation_config, train_detection, train_segmentation
from ...errors import UserError
from ...evaluation.linear import lbfgs_logistic_probe
from ...features.cache import FeatureKey
from ...training import load_config, train
from ...utils.config import merge_options
from ...utils.files import file_sha256
from ..context import StudyContext
from .base import Result, Score, Stage, mean_std, memo, table

Load = Callable[[Path, list[str]], Any]
TASKS: dict[str, tuple[Load, Callable[[Any], dict[str, Any]], list[str]]] = {
    "classification": (load_config, train, ["top1", "top5"]),
    "segmentation": (load_segmentation_config, train_segmentation, ["mIoU", "aAcc"]),
    "detection": (load_detection_config, train_detection, ["bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"]),
}
RUN_KEYS = {"id", "name", "setting", "config", "cached", "probe", "key", "percent"}


def slug(name: str) -> str:
    """A run's folder name from its display name: lower case, one dash between words."""
    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in name.lower())).strip("-")


class TrainStage(Stage):
    kind = "train"
    title = "Heads"
    trains = True
    defaults: ClassVar[dict[str, Any]] = {"task": "classification", "config": None, "base": {}, "runs": [], "cache": None, "grid": None,
                "metric": None, "first_seed": {}}

    def check(self) -> None:
        s = self.settings
        if s["task"] not in TASKS:
            raise UserError(f"{self.where('task')}={s['task']!r}: use {', '.join(TASKS)}")
        if s["task"] != "classification" and not s["config"]:
            raise UserError(f"{self.where('config')}: a {s['task']} stage needs a config file")
        if not s["runs"] and not s["grid"]:
            raise UserError(f"{self.where('runs')}: give the runs to train (or a grid)")
        for run in s["runs"]:
            if not isinstance(run, dict) or "name" not in run or set(run) - RUN_KEYS:
                raise UserError(f"{self.where('runs')}: each run needs a name and takes only {', '.join(sorted(RUN_KEYS))}; "
                                f"got {run!r}")
        ids = [self.run_id(r) for r in self.runs()]
        if len(set(ids)) != len(ids):
            raise UserError(f"{self.where('runs')}: two runs share a folder name ({ids}): give them ids")

    @property
    def metric(self) -> str:
        return self.settings["metric"] or TASKS[self.settings["task"]][2][0]

    def runs(self) -> list[dict[str, Any]]:
        grid = self.settings["grid"]
        if not grid:
            return self.settings["runs"]
        return [{"id": f"t{t}_b{b}", "name": f"t={t}, b={b}", "config": {"features": {"timesteps": [t], "blocks": [b]}}}
                for t in grid["timesteps"] for b in grid["blocks"]]

    @staticmethod
    def run_id(run: dict[str, Any]) -> str:
        return run.get("id") or slug(run["name"])

    def depends(self) -> dict[str, Any]:
        """The config file's content is part of what the stage's results depend on."""
        path = self.settings["config"]
        return {"config_sha256": file_sha256(Path(path))} if path else {}

    # ----- configs
    def _classification_base(self, ctx: StudyContext) -> dict[str, Any]:
        test = ctx.per_class("test")
        if test is None:
            full = ctx.split("test", None)
            test = len(full) // len(full.classes)  # type: ignore[arg-type, attr-defined]
        return {"model": ctx.model_section(),
                "data": {"name": ctx.spec.data["name"], "root": ctx.data_root, "per_class": ctx.per_class("train"),
                         "test_per_class": test, "subset_seed": 0, "flip": False, "workers": ctx.spec.run["workers"]},
                "run": {"progress": ctx.progress, "tensorboard": False}}

    def config_of(self, ctx: StudyContext, run: dict[str, Any]) -> dict[str, Any]:
        """The ``difrep train`` config of one run (without seed and output folder)."""
        s = self.settings
        if s["task"] == "classification":
            config = merge_options(merge_options(self._classification_base(ctx), s["base"]), run.get("config") or {})
            if run.get("percent"):  # of the study's training images
                images = len(ctx.split("train", ctx.per_class("train")))  # type: ignore[arg-type]
                classes = len(ctx.split("train", None).classes)  # type: ignore[attr-defined]
                config["data"]["per_class"] = max(1, round(images * run["percent"] / 100 / classes))
            per_class = config["data"].get("per_class")
            if per_class and "optim" in config:  # an epoch has one batch at least
                classes = len(ctx.split("train", None).classes)  # type: ignore[attr-defined]
                config["optim"]["batch_size"] = min(config["optim"].get("batch_size", 32), classes * per_class)
            return config
        config = {"base": str(Path(s["config"]).resolve())}
        return merge_options(merge_options(config, s["base"]), merge_options(
            {"run": {"progress": ctx.progress, "tensorboard": False}}, run.get("config") or {}))

    def _cached(self, run: dict[str, Any]) -> bool:
        return self.settings["cache"] is not None and run.get("cached", True) and not run.get("probe")

    def _cache_pair(self, ctx: StudyContext, configs: dict[str, dict[str, Any]], runs: list[dict[str, Any]],
                    per_class: int | None) -> Any:
        """The caches of one training-image count, holding every (t, b) its cached and probe runs read; made the
        first time a run needs them (a stage whose runs all finished reads no features)."""
        if per_class not in self._made:
            ts, bs = set(), set()
            for run in runs:
                c = configs[self.run_id(run)]
                if (self._cached(run) or run.get("probe")) and c["data"]["per_class"] == per_class:
                    f = c["features"] if not run.get("probe") else {"timesteps": [run["key"]["t"]], "blocks": [run["key"]["b"]]}
                    ts.update(f["timesteps"])
                    bs.update(f["blocks"])
            self._made[per_class] = ctx.feature_pair("trained", sorted(ts), sorted(bs), self.settings["cache"]["pools"],
                                                     per_class)
        return self._made[per_class]

    # ----- running
    def run(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result:
        return self._runs(ctx, folder, seeds, train=True)

    def partial(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result | None:
        """The finished runs of a stage cut short, trained nothing."""
        result = self._runs(ctx, folder, seeds, train=False)
        return result if any(r["values"] for r in result["runs"]) else None

    def _runs(self, ctx: StudyContext, folder: Path, seeds: list[int], train: bool) -> Result:
        self.check()
        s = self.settings
        load, fit, metrics = TASKS[s["task"]]
        runs = self.runs()
        seeds = seeds[:1] if s["grid"] else seeds
        configs = {self.run_id(r): self.config_of(ctx, r) for r in runs}
        self._made: dict[int | None, Any] = {}

        def caches(config: dict[str, Any]) -> Any:
            return self._cache_pair(ctx, configs, runs, config["data"]["per_class"])

        folder.mkdir(parents=True, exist_ok=True)
        records: dict[str, list[dict[str, Any]]] = {self.run_id(r): [] for r in runs}
        for seed in seeds:  # every run's first seed before any second one: a stage cut short still compares
            for run in runs:
                rid = self.run_id(run)
                config = configs[rid]
                if run.get("probe"):
                    if seed == seeds[0] and (train or (folder / rid / "study_run.json").is_file()):
                        records[rid].append(memo(folder / rid / "study_run.json",
                                                 lambda run=run, config=config: self._probe(run, caches(config))))
                    continue
                extra = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in
                         (s["first_seed"].items() if seed == seeds[0] else ())]
                out = folder / f"{rid}-seed{seed}"

                def train_run(run: dict[str, Any] = run, config: dict[str, Any] = config, rid: str = rid,
                              seed: int = seed, out: Path = out, extra: list[str] = extra) -> dict[str, Any]:
                    if self._cached(run):
                        train_cache, test_cache = caches(config)
                        config = merge_options(config, {"features": {"cache_train": str(train_cache.folder),
                                                                     "cache_test": str(test_cache.folder)}})
                    path = folder / f"{rid}.yaml"
                    if "base" in config:  # relative to the run's file, so that a clone elsewhere reads it
                        config = {**config, "base": os.path.relpath(config["base"], folder.resolve())}
                    path.write_text(yaml.safe_dump(config, sort_keys=False))
                    return _timed(load, fit, metrics, path, [*extra, f"run.seed={seed}", f"run.out={out}"])

                if not train and not (out / "study_run.json").is_file():
                    continue
                record = memo(out / "study_run.json", train_run)
                records[rid].append({**record, "seed": seed})
        result_runs = []
        for run in runs:
            rid, mine = self.run_id(run), records[self.run_id(run)]
            values = [r[self.metric] for r in mine]
            mean, std = mean_std(values) if values else (float("nan"), 0.0)
            result_runs.append({
                "id": rid, "name": run["name"], "setting": run.get("setting", ""), "runs": mine,
                "values": values, "mean": mean, "std": std, "parameters": mine[0].get("parameters", 0) if mine else 0,
                "command": (f"difrep probe --solver lbfgs --train {mine[0]['train_cache']} --test {mine[0]['test_cache']} "
                            f"--key {FeatureKey(**run['key']).name}" if run.get("probe") and mine else
                            f"difrep train {folder / rid}.yaml run.seed=SEED run.out={folder / rid}-seedSEED")})
        result: Result = {"task": s["task"], "metric": self.metric, "seeds": seeds, "runs": result_runs}
        if s["grid"] and train:
            best = max(result_runs, key=lambda r: r["mean"])
            t, b = (int(x[1:]) for x in best["id"].split("_"))
            result["chosen"] = {"t": t, "b": b, self.metric: best["mean"]}
        plot_runs(result, folder / "results.png", self.heading or self.name)
        return result

    def _probe(self, run: dict[str, Any], caches: Any) -> dict[str, Any]:
        """L-BFGS logistic regression on the stage's cached features (deterministic: one value, no seed)."""
        began = time.perf_counter()
        key = FeatureKey(**run["key"])
        train_x = caches[0].features(key).to_tensor()
        classes = int(caches[0].labels.max()) + 1
        r = lbfgs_logistic_probe(train_x, caches[0].labels, caches[1].features(key).to_tensor(), caches[1].labels, classes)
        return {"top1": r.top1, "top5": r.top5, "parameters": classes * (train_x.shape[1] + 1),
                "seconds": time.perf_counter() - began, "seed": None, "train_cache": str(caches[0].folder),
                "test_cache": str(caches[1].folder)}

    # ----- reading
    def report(self, result: Result, folder: str) -> list[str]:
        metric = result["metric"]
        if "chosen" in result:
            c = result["chosen"]
            lines = [f"One run a setting, scored on held-out data ({metric}); chosen: t={c['t']}, b={c['b']} "
                     f"({c[metric]:.1f}).", ""]
            ts = sorted({int(r["id"].split("_")[0][1:]) for r in result["runs"]})
            bs = sorted({int(r["id"].split("_")[1][1:]) for r in result["runs"]})
            score = {r["id"]: r["mean"] for r in result["runs"]}
            return lines + table(["t \\ b", *map(str, bs)], [[t, *[f"{score.get(f't{t}_b{b}', float('nan')):.1f}" for b in bs]]
                                                            for t in ts])
        rows = []
        for r in result["runs"]:
            v = r["values"]
            shown = f"{r['mean']:.1f} ± {r['std']:.1f}" if len(v) > 1 else f"{r['mean']:.1f} (one seed)" if v else "not run yet"
            # a run's wall time, fastest seed: the others may have shared the CPU or been paused
            rows.append([r["name"], r["setting"], shown, ", ".join(f"{x:.1f}" for x in v), f"{r['parameters']:,}",
                         f"{min(x['seconds'] for x in r['runs']):.0f}" if r["runs"] else "-"])
        header = ["run", "setting", f"test {metric}, mean ± std", "per seed", "trained parameters",
                  "seconds a run (fastest seed)"]
        if not any(r["setting"] for r in result["runs"]):
            header, rows = [header[0], *header[2:]], [[row[0], *row[2:]] for row in rows]
        return [f"![results]({folder}/results.png)", "", *table(header, rows),
                "```bash", *[r["command"] for r in result["runs"]], "```", ""]

    def score(self, result: Result, selector: str, metric: str | None) -> Score | None:
        """A run by its id; ``metric`` another of the runs' recorded metrics (the stage's by default)."""
        run = next((r for r in result["runs"] if r["id"] == selector), None)
        if run is None:
            ids = ", ".join(r["id"] for r in result["runs"])
            raise UserError(f"{self.source}: stage {self.name!r} has no run {selector!r}; its runs: {ids}")
        values = [r[metric or result["metric"]] for r in run["runs"]]
        return Score(run["name"], tuple(float(v) for v in values)) if values else None


def _timed(load: Load, fit: Callable[[Any], dict[str, Any]], metrics: list[str], config: Path,
           overrides: list[str]) -> dict[str, Any]:
    """One engine run: its test metrics, trained parameters and the seconds this call took (a resumed run: its last
    part), kept in the study's results so that a finished run needs no weights file."""
    began = time.perf_counter()
    out = fit(load(config, overrides))
    return {**{k: out[k] for k in metrics}, "parameters": out.get("parameters", 0), "seconds": time.perf_counter() - began}


def plot_runs(result: Result, path: Path, title: str) -> None:
    """Every run's metric: the mean over seeds as a bar with its spread, each seed as a dot."""
    from matplotlib.figure import Figure

    runs = [r for r in result["runs"] if r["values"]]
    if not runs:
        return
    fig = Figure(figsize=(7, 0.9 + 0.35 * len(runs)))
    ax = fig.subplots()
    y = list(range(len(runs)))[::-1]
    ax.barh(y, [r["mean"] for r in runs], xerr=[r["std"] for r in runs], color="#9ab", capsize=3)
    for yi, r in zip(y, runs):
        ax.plot(r["values"], [yi] * len(r["values"]), "k.", ms=4)
    ax.set_yticks(y, [r["name"] for r in runs])
    ax.set_xlabel(f"test {result['metric']} (%), {len(result['seeds'])} seed(s)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
