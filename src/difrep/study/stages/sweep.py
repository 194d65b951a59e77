"""The ``sweep`` stage: a linear probe and kNN (k = 20) on every (t, b) at one pooling, then every pooling at the
chosen t (the paper's Figures 3-4), and the settings the heads use, all chosen on held-out training images."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ...errors import UserError
from ...evaluation.plots import plot_sweep
from ...evaluation.sweep import SweepRow, best_row, sweep_row, write_csv
from ...features.cache import FeatureCache, FeatureKey
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


def _top(rows: list[SweepRow], key: str, k: int, **fixed: int) -> list[int]:
    chosen = [r for r in rows if all(getattr(r, a) == v for a, v in fixed.items())]
    ranked = sorted(chosen, key=lambda r: (-r.probe_val_top1, -r.knn20_val_top1))
    out: list[int] = []
    for r in ranked:
        if getattr(r, key) not in out:
            out.append(getattr(r, key))
    return sorted(out[:k])


def choose_settings(rows: list[SweepRow], model: nn.Module) -> dict[str, Any]:
    """Settings for the heads, all from held-out accuracy: the best (t, b); DifFormer's T (best 3 steps at
    that b) and B (best 3 blocks at that t); DifFeed's feature block (the best decoder block at that t)."""
    best = best_row(rows)
    middle = model.num_encoder_blocks + 1
    decoder = [r for r in rows if r.t == best.t and r.pool == best.pool and r.b > middle]
    feed_block = best.b if best.b > middle or not decoder else max(decoder, key=lambda r: r.probe_val_top1).b
    return {"t": best.t, "b": best.b, "pool": best.pool,
            "T": _top(rows, "t", 3, b=best.b, pool=best.pool), "B": _top(rows, "b", 3, t=best.t, pool=best.pool),
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
                "pools": [], "probe": {}}

    def run(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result:
        s = self.settings
        probe = probe_settings(s["probe"], self.where("probe"))
        model = ctx.model(s["model"])
        blocks = s["blocks"] or list(range(1, model.num_blocks + 1))
        timesteps = sorted(set(s["timesteps"]))
        train, test = ctx.feature_pair(s["model"], timesteps, blocks, [s["pool"]])
        keys = [FeatureKey(t, b, s["pool"]) for t in timesteps for b in sorted(set(blocks))]
        rows = probe_rows(ctx, folder / "probe", train, test, keys, probe)
        best = best_row(rows)
        pool_rows: list[SweepRow] = []
        others = sorted(set(s["pools"]) - {s["pool"]})
        if others:
            tr, te = ctx.feature_pair(s["model"], [best.t], blocks, others)
            pool_rows = [r for r in rows if r.t == best.t] + probe_rows(
                ctx, folder / "probe", tr, te, [FeatureKey(best.t, b, p) for b in sorted(set(blocks)) for p in others], probe)
        write_csv(rows, folder / "sweep.csv")
        name = f"{ctx.spec.model['name']} ({'random init' if s['model'] == 'random' else 'trained'})"
        title = f"{name}: {'SGD linear probe' if probe['solver'] == 'sgd' else 'L-BFGS logistic regression'} top-1 (%)"
        plot_sweep(rows, best, folder / "sweep_val.png", "probe_val_top1", f"{title}, held-out training images")
        plot_sweep(rows, best, folder / "sweep_test.png", "probe_test_top1", f"{title}, test images")
        if pool_rows:
            write_csv(pool_rows, folder / "pools.csv")
            plot_pools(pool_rows, folder / "pools_test.png", f"{title} at t={best.t}, by pool size (test)")
        return {"model": s["model"], "solver": probe["solver"], "timesteps": timesteps, "blocks": sorted(set(blocks)),
                "num_blocks": model.num_blocks, "middle_block": model.num_encoder_blocks + 1,
                "best": asdict(best), "chosen": {**choose_settings(rows, model), "timesteps": timesteps, "t_min": timesteps[0]},
                "rows": [asdict(r) for r in rows], "pool_rows": [asdict(r) for r in pool_rows]}

    def report(self, result: Result, folder: str) -> list[str]:
        best = result["best"]
        what = "the random-init copy" if result["model"] == "random" else "the trained model"
        lines = [f"Probe: {'the paper' + chr(39) + 's SGD linear probe' if result['solver'] == 'sgd' else 'L-BFGS logistic regression'} "
                 f"on {what}'s pooled features; red frame: the held-out best.", "",
                 f"![held-out sweep]({folder}/sweep_val.png)", "", f"![test sweep]({folder}/sweep_test.png)", ""]
        if result["pool_rows"]:
            lines += [f"![pools]({folder}/pools_test.png)", ""]
        lines += [f"Chosen on held-out images: t={best['t']}, b={best['b']}, pool {best['pool']}: held-out "
                  f"{best['probe_val_top1']:.1f}%, test top-1 {best['probe_test_top1']:.1f}%, top-5 "
                  f"{best['probe_test_top5']:.1f}% (kNN k=20: {best['knn20_test_top1']:.1f}%). Every cell: "
                  f"`{folder}/sweep.csv`" + (f", `{folder}/pools.csv`." if result["pool_rows"] else "."), ""]
        c = result["chosen"]
        if result["model"] == "trained":
            lines += [f"Settings for the heads: t={c['t']}, b={c['b']}; DifFormer T={c['T']}, B={c['B']}; DifFeed reads "
                      f"b={c['difeed_block']}.", ""]
        return lines

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
