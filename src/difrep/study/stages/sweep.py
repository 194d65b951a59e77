"""The ``sweep`` stage: a linear probe and kNN (k = 20) on every (t, b) at one pooling, then every pooling at the
chosen t (the paper's Figures 3-4), and the settings the heads use, all chosen on held-out training images."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ...errors import UserError
from ...evaluation.plots import plot_search, plot_sweep
from ...evaluation.search import Scored, SearchSpace, best_values, search_settings
from ...evaluation.sources import ExtractingSource
from ...evaluation.sweep import SweepRow, best_row, sweep_row, write_csv
from ...features.cache import FeatureCache, FeatureKey
from ...features.pictures import write_class_pictures
from ..context import StudyContext
from .base import Result, Score, Stage, memo

PROBE_DEFAULTS: dict[str, Any] = {"solver": "sgd", "epochs": 28, "lr": 1e-2, "batch_size": 128, "momentum": 0.9,
                                  "step_epochs": 7, "gamma": 0.1}
SGD_OPTIONS = ("epochs", "lr", "batch_size", "momentum", "step_epochs", "gamma")


def probe_settings(probe: dict[str, Any], where: str) -> dict[str, Any]:
    """The probe section with its defaults: ``solver: sgd`` (the paper's GD probe: SGD, 28 epochs, StepLR 7 x 0.1,
    batch 128 = 32 a GPU x 4) or ``solver: lbfgs`` (logistic regression, L2 from {1e-4, 1e-2} on held-out images)."""
    unknown = sorted(set(probe) - set(PROBE_DEFAULTS))
    if unknown:
        raise UserError(f"{where}: unknown probe option(s) {unknown}; valid: {', '.join(PROBE_DEFAULTS)}")
    merged = {**PROBE_DEFAULTS, **probe}
    if merged["solver"] not in ("sgd", "lbfgs"):
        raise UserError(f"{where}.solver={merged['solver']!r}: use sgd or lbfgs")
    return merged


def grid_ranking(rows: list[SweepRow]) -> list[FeatureKey]:
    """The grid's settings, best first: the held-out choice, then by held-out probe and kNN accuracy."""
    best = best_row(rows)
    ranked = sorted(rows, key=lambda r: (-r.probe_val_top1, -r.knn20_val_top1))
    return [FeatureKey(best.t, best.b, best.pool)] + [FeatureKey(r.t, r.b, r.pool) for r in ranked if r is not best]


def choose_settings(ranking: list[FeatureKey], model: nn.Module) -> dict[str, Any]:
    """Settings for the heads from settings ranked on held-out accuracy (best first): the best (t, b); DifFormer's
    T (best 3 steps at that b) and B (best 3 blocks at that t); DifFeed's feature block (the best decoder block at
    that t)."""
    best = ranking[0]
    middle = model.middle_block_index
    decoder = [r for r in ranking if r.t == best.t and r.pool == best.pool and r.b > middle]
    feed_block = best.b if best.b > middle or not decoder else decoder[0].b
    return {"t": best.t, "b": best.b, "pool": best.pool,
            "T": best_values(ranking, "t", 3, b=best.b, pool=best.pool), "B": best_values(ranking, "b", 3, t=best.t, pool=best.pool),
            "difeed_block": feed_block}


def probe_rows(ctx: StudyContext, folder: Path, train: FeatureCache, test: FeatureCache, keys: list[FeatureKey],
               probe: dict[str, Any]) -> list[SweepRow]:
    """The probe (and kNN k=20) per key, each cell saved as it finishes, so a stage cut short resumes."""
    fit, val = ctx.held_out(train.labels)
    options = {k: probe[k] for k in SGD_OPTIONS}
    return [SweepRow(**memo(folder / f"{key.name}.json", lambda key=key: asdict(sweep_row(
        train, test, key, fit, val, solver=probe["solver"], probe_options=options))))
        for key in keys]


class SweepStage(Stage):
    kind = "sweep"
    title = "Linear probe over t, b and pool (Figures 3-4)"
    defaults: ClassVar[dict[str, Any]] = {"model": "trained", "timesteps": [5, 25, 50, 100, 150, 250, 500], "blocks": None, "pool": 2,
                "pools": [], "probe": {}, "search": "grid", "search_options": {}}

    def run(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result:
        s = self.settings
        if s["search"] not in ("grid", "auto"):
            raise UserError(f"{self.where('search')}={s['search']!r}: use grid (every setting) or auto (successive halving)")
        probe = probe_settings(s["probe"], self.where("probe"))
        model = ctx.model(s["model"])
        blocks = sorted(set(s["blocks"] or range(1, model.num_blocks + 1)))
        timesteps = sorted(set(s["timesteps"]))
        name = f"{ctx.spec.model['name']} ({'random init' if s['model'] == 'random' else 'trained'})"
        title = f"{name}: {'SGD linear probe' if probe['solver'] == 'sgd' else 'L-BFGS logistic regression'} top-1 (%)"
        common = {"model": s["model"], "solver": probe["solver"], "timesteps": timesteps, "blocks": blocks,
                  "num_blocks": model.num_blocks, "middle_block": model.middle_block_index, "search": s["search"],
                  "decoder": any(info.stage == "decoder" for info in model.feature_info)}
        if s["search"] == "auto":
            result = {**common, **self._auto(ctx, folder, model, timesteps, blocks, probe, title)}
            return {**result, "pictures": draw_pictures(ctx, model, result["chosen"], folder / "pictures.png", name)}
        train, test = ctx.feature_pair(s["model"], timesteps, blocks, [s["pool"]])
        keys = [FeatureKey(t, b, s["pool"]) for t in timesteps for b in blocks]
        rows = probe_rows(ctx, folder / "probe", train, test, keys, probe)
        best = best_row(rows)
        pool_rows: list[SweepRow] = []
        others = sorted(set(s["pools"]) - {s["pool"]})
        if others:
            tr, te = ctx.feature_pair(s["model"], [best.t], blocks, others)
            pool_rows = [r for r in rows if r.t == best.t] + probe_rows(
                ctx, folder / "probe", tr, te, [FeatureKey(best.t, b, p) for b in blocks for p in others], probe)
        write_csv(rows, folder / "sweep.csv")
        plot_sweep(rows, best, folder / "sweep_val.png", "probe_val_top1", f"{title}, held-out training images")
        plot_sweep(rows, best, folder / "sweep_test.png", "probe_test_top1", f"{title}, test images")
        if pool_rows:
            write_csv(pool_rows, folder / "pools.csv")
            plot_pools(pool_rows, folder / "pools_test.png", f"{title} at t={best.t}, by pool size (test)")
        chosen = {**choose_settings(grid_ranking(rows), model), "timesteps": timesteps, "t_min": timesteps[0]}
        return {**common, "best": asdict(best), "chosen": chosen,
                "pictures": draw_pictures(ctx, model, chosen, folder / "pictures.png", name),
                "rows": [asdict(r) for r in rows], "pool_rows": [asdict(r) for r in pool_rows]}

    def _auto(self, ctx: StudyContext, folder: Path, model: nn.Module, timesteps: list[int], blocks: list[int],
              probe: dict[str, Any], title: str) -> Result:
        """Successive halving (:func:`~difrep.evaluation.search.search_settings`) on the study's images; the
        search is saved whole, so a rerun reads it back."""
        s, r = self.settings, ctx.spec.run
        space = SearchSpace(tuple(timesteps), tuple(blocks), tuple({s["pool"], *s["pools"]}))

        def search() -> dict[str, Any]:
            options = {"seed": 0, "batch_size": r["batch_size"], "chunk_size": r["chunk_size"], "workers": r["workers"],
                       "device": ctx.device}
            train = ExtractingSource(model, ctx.split("train", ctx.per_class("train")), **options)
            test = ExtractingSource(model, ctx.split("test", ctx.per_class("test")), **options)
            found = search_settings(train, test, space, mode="auto", solver=probe["solver"],
                                    val_fraction=ctx.spec.data["val_fraction"], seed=0,
                                    probe_options={k: probe[k] for k in SGD_OPTIONS} if probe["solver"] == "sgd" else None,
                                    progress=ctx.progress, **s["search_options"])
            return {"choice": found.choice, "scored": [asdict(x) for x in found.scored], "final": asdict(found.final),
                    "ranking": [k.name for k in found.ranking()]}

        found = memo(folder / "search.json", search)
        scored = [Scored(**x) for x in found["scored"]]
        best = SweepRow(**found["final"])
        write_csv(scored, folder / "sweep.csv")
        plot_search(scored, best, folder / "surface_val.png",
                    f"{title}, held-out training images, at the largest subset each setting reached")
        ranking = [FeatureKey.parse(k) for k in found["ranking"]]
        return {"best": found["final"], "choice": found["choice"],
                "chosen": {**choose_settings(ranking, model), "timesteps": timesteps, "t_min": timesteps[0]},
                "rows": [], "pool_rows": [], "scored": found["scored"]}

    def report(self, result: Result, folder: str) -> list[str]:
        best = result["best"]
        what = "the random-init copy" if result["model"] == "random" else "the trained model"
        lines = [f"Probe: {'the paper' + chr(39) + 's SGD linear probe' if result['solver'] == 'sgd' else 'L-BFGS logistic regression'} "
                 f"on {what}'s pooled features; red frame: the held-out best.", ""]
        if result.get("search") == "auto":
            lines += self._auto_report(result, folder)
        else:
            lines += [f"![held-out sweep]({folder}/sweep_val.png)", "", f"![test sweep]({folder}/sweep_test.png)", ""]
        if result["pool_rows"]:
            lines += [f"![pools]({folder}/pools_test.png)", ""]
        c = result["chosen"]
        if "pictures" in result:
            lines += [f"What the best settings encode (DifFormer's T={c['T']} x B={c['B']}): each feature map on its "
                      "first three principal components as RGB, beside the noised input x_t, for three test images "
                      "of different classes.", "", f"![feature pictures]({folder}/{result['pictures']})", ""]
        lines += [f"Chosen on held-out images: t={best['t']}, b={best['b']}, pool {best['pool']}: held-out "
                  f"{best['probe_val_top1']:.1f}%, test top-1 {best['probe_test_top1']:.1f}%, top-5 "
                  f"{best['probe_test_top5']:.1f}% (kNN k=20: {best['knn20_test_top1']:.1f}%). Every score: "
                  f"`{folder}/sweep.csv`" + (f", `{folder}/pools.csv`." if result["pool_rows"] else "."), ""]
        if result["model"] == "trained":
            feed = f"; DifFeed reads b={c['difeed_block']}" if result.get("decoder", True) else ""
            lines += [f"Settings for the heads: t={c['t']}, b={c['b']}; DifFormer T={c['T']}, B={c['B']}{feed}.", ""]
        return lines

    @staticmethod
    def _auto_report(result: Result, folder: str) -> list[str]:
        c = result["choice"]
        lines = [f"Automatic search (successive halving over growing image subsets, docs/evaluation.md): "
                 f"{c['settings_scored']} scores of {c['grid_settings']} settings, {c['forward_passes']:,} forward "
                 f"passes, {c['seconds']:.0f} s."]
        if "estimated_grid_seconds" in c:
            grid = c["estimated_grid_seconds"]
            lines[-1] += (f" The full grid would take about {grid:.0f} s here (every image of both splits at every t "
                          f"through the deepest block at the measured {c['timing']['seconds_per_full_pass'] * 1e3:.1f} ms "
                          f"a pass, and every setting scored like the final one): the search saved "
                          f"{1 - c['seconds'] / grid:.0%} of it.")
        return [*lines, "", f"![held-out surface]({folder}/surface_val.png)", ""]

    def score(self, result: Result, selector: str, metric: str | None) -> Score | None:
        """``best`` (the held-out choice) or ``best@pool=N`` (its (t, b) at another pooling); metric: a row field."""
        best, field = result["best"], metric or "probe_test_top1"
        what = "random-init copy" if result["model"] == "random" else "linear probe"
        if selector == "best":
            return Score(what, (float(best[field]),))
        name, _, pool = selector.partition("@pool=")
        if name != "best" or not pool.isdigit():
            raise UserError(f"{self.source}: stage {self.name!r}: selector {selector!r}: use best or best@pool=N")
        row = next((r for r in result["rows"] + result["pool_rows"]
                    if (r["t"], r["b"], r["pool"]) == (best["t"], best["b"], int(pool))), None)
        return None if row is None else Score(f"{what}, pool {pool}", (float(row[field]),))


def draw_pictures(ctx: StudyContext, model: nn.Module, chosen: dict[str, Any], path: Path, title: str) -> str:
    """Feature pictures of DifFormer's T x B on a few test images; returns the PNG's name."""
    data = ctx.split("test", ctx.per_class("test"))
    return write_class_pictures(model, data, chosen["T"], chosen["B"], path, title=title).name


def plot_pools(rows: list[SweepRow], path: Path, title: str) -> None:
    """Test top-1 over blocks, one line per pool size (Figure 4's pooling panel)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    for pool in sorted({r.pool for r in rows}):
        mine = sorted((r for r in rows if r.pool == pool), key=lambda r: r.b)
        ax.plot([r.b for r in mine], [r.probe_test_top1 for r in mine], marker="o", ms=3, label=f"pool {pool}x{pool}")
    ax.set_xticks(sorted({r.b for r in rows}))
    ax.set_xlabel("block b")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
