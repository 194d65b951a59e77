"""Choosing (t, b, pool): the full grid, or an automatic search at a fraction of its cost.

``search_settings(train, test, space, mode="auto")`` runs successive halving over growing, class-balanced
subsets of the training split (see docs/evaluation.md for why each part is there):

1. **Coarse lattice, refined.** The first rung scores every other t and every other b (the ends included)
   at every pool, then the unscored grid neighbours (next t, next b) of the best ``refine_top`` settings,
   until those are all scored: held-out accuracy is smooth over t and b (the paper's Figures 3-4), so a
   peak is found without scoring the whole grid.
2. **Successive halving.** Each rung fits the probe on ``first_per_class x growth^r`` images a class and
   scores it on as many held-out images a class (all of them once the held-out part is used up); the best
   ``keep`` fraction moves on. Only the survivors' images are extracted at the next rung, at the
   survivors' timesteps only, up to their deepest block.
3. **Early stop.** When the leader is the same at two rungs running and leads the runner-up by more than
   two standard errors of its held-out accuracy, the rungs in between are skipped.
4. **Final.** The leader is scored as the grid scores every cell (probe on all the fitting images,
   held-out and test accuracy, kNN); the test split is extracted for it alone and never decides.

``mode="grid"`` scores every setting that way. Both return a :class:`SearchResult` whose ``choice`` is
what ``difrep sweep`` writes to ``choice.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.subsets import balanced_order, held_out_split
from ..errors import UserError
from ..features.cache import FeatureKey
from .metrics import count_classes
from .sources import ExtractingSource, FeatureSource
from .sweep import SweepRow, best_row, fit_probe, score_setting


@dataclass(frozen=True)
class SearchSpace:
    """The grid: every (t, b, pool) of these timesteps, blocks and pool sizes."""

    timesteps: tuple[int, ...]
    blocks: tuple[int, ...]
    pools: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("timesteps", "blocks", "pools"):
            values = tuple(sorted(set(getattr(self, name))))
            if not values:
                raise UserError(f"the search space has no {name}")
            object.__setattr__(self, name, values)

    @property
    def keys(self) -> list[FeatureKey]:
        return [FeatureKey(t, b, p) for t in self.timesteps for b in self.blocks for p in self.pools]

    def coarse(self) -> list[FeatureKey]:
        """Every other t and b, both ends included, at every pool."""
        def every_other(values: tuple[int, ...]) -> list[int]:
            return sorted(set(values[::2]) | {values[-1]})
        return [FeatureKey(t, b, p) for t in every_other(self.timesteps) for b in every_other(self.blocks)
                for p in self.pools]

    def neighbours(self, key: FeatureKey) -> list[FeatureKey]:
        """The settings one grid step away in t or in b (same pool)."""
        ti, bi = self.timesteps.index(key.t), self.blocks.index(key.b)
        out = []
        for dt, db in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            if 0 <= ti + dt < len(self.timesteps) and 0 <= bi + db < len(self.blocks):
                out.append(FeatureKey(self.timesteps[ti + dt], self.blocks[bi + db], key.pool))
        return out


@dataclass
class Scored:
    """One setting scored at one subset size (a line of ``sweep.csv``)."""

    t: int
    b: int
    pool: int
    dim: int
    rung: int
    fit_images: int
    held_out_images: int
    held_out_top1: float
    seconds: float


@dataclass
class SearchResult:
    choice: dict[str, Any]
    scored: list[Scored]
    final: SweepRow
    grid_rows: list[SweepRow] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    def ranking(self) -> list[FeatureKey]:
        """Every scored setting, best first: by the largest subset it was scored on, then its held-out
        accuracy there (the order successive halving judges by); the final choice first."""
        last: dict[FeatureKey, Scored] = {}
        for s in self.scored:
            key = FeatureKey(s.t, s.b, s.pool)
            if key not in last or s.fit_images >= last[key].fit_images:
                last[key] = s
        chosen = FeatureKey(self.final.t, self.final.b, self.final.pool)
        return sorted(last, key=lambda k: (k != chosen, -last[k].fit_images, -round(last[k].held_out_top1, 6),
                                           last[k].dim))


def best_values(ranking: list[FeatureKey], key: str, k: int, **fixed: int) -> list[int]:
    """The ``k`` best values of ``key`` (t, b or pool) among ranked settings that match ``fixed``, ascending:
    e.g. the three best blocks at the chosen t, for DifFormer's B or for feature pictures. When fewer than
    ``k`` settings match (an automatic search scores few settings beside its choice), the fixed values are
    relaxed in the order given: the best blocks at the chosen pool at any t, then at any pool."""
    out: list[int] = []
    constraints = list(fixed.items())
    for dropped in range(len(constraints) + 1):
        for r in ranking:
            if len(out) == k:
                return sorted(out)
            if all(getattr(r, a) == v for a, v in constraints[dropped:]) and getattr(r, key) not in out:
                out.append(getattr(r, key))
    return sorted(out)


def _standard_error(accuracy: float, n: int) -> float:
    p = min(max(accuracy / 100, 1e-3), 1 - 1e-3)
    return 100 * math.sqrt(p * (1 - p) / max(n, 1))


class _Scorer:
    """Scores settings on a subset, never the same setting twice at one subset size."""

    def __init__(self, train: FeatureSource, num_classes: int, probe: dict[str, Any], progress: bool) -> None:
        self.train, self.num_classes, self.probe, self.progress = train, num_classes, probe, progress
        self.scored: list[Scored] = []
        self.done: dict[tuple[FeatureKey, int], Scored] = {}
        self.probe_seconds = 0.0

    def score(self, keys: list[FeatureKey], fit_rows: torch.Tensor, val_rows: torch.Tensor, rung: int) -> dict[FeatureKey, float]:
        todo = [k for k in keys if (k, len(fit_rows)) not in self.done]
        rows = torch.cat([fit_rows, val_rows])
        y = self.train.labels
        features = self.train.features(rows, todo) if todo else {}
        for key in tqdm(todo, desc=f"search rung {rung} ({len(fit_rows)} images)", disable=not self.progress):
            x = features.pop(key)
            start = time.perf_counter()
            probe, _ = fit_probe(x[: len(fit_rows)], y[fit_rows], self.num_classes, **self.probe)
            accuracy = probe.accuracy(x[len(fit_rows):], y[val_rows])[1]
            seconds = time.perf_counter() - start
            self.probe_seconds += seconds
            scored = Scored(key.t, key.b, key.pool, x.shape[1], rung, len(fit_rows), len(val_rows), accuracy, seconds)
            self.done[key, len(fit_rows)] = scored
            self.scored.append(scored)
        return {k: self.done[k, len(fit_rows)].held_out_top1 for k in keys}


def _leader(scores: dict[FeatureKey, float], dims: dict[FeatureKey, int]) -> list[FeatureKey]:
    return sorted(scores, key=lambda k: (-round(scores[k], 6), dims.get(k, 0), k.t, k.b, k.pool))


def search_settings(
    train: FeatureSource,
    test: FeatureSource,
    space: SearchSpace,
    mode: str = "auto",
    solver: str = "lbfgs",
    val_fraction: float = 0.1,
    seed: int = 0,
    first_per_class: int = 20,
    growth: float = 3.0,
    keep: float = 1 / 3,
    refine_top: int = 3,
    probe_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> SearchResult:
    """The (t, b, pool) with the best held-out accuracy: every setting (``mode="grid"``) or successive halving
    (``mode="auto"``, see the module docstring). Held-out images are a seeded, class-balanced
    ``val_fraction`` of the training split; the test split is only measured. ``solver`` and
    ``probe_options`` choose the probe as in :func:`~difrep.evaluation.sweep.score_setting`."""
    if mode not in ("grid", "auto"):
        raise UserError(f"search={mode!r}: use 'grid' (every setting) or 'auto' (successive halving)")
    if first_per_class < 1 or growth <= 1 or not 0 < keep < 1 or refine_top < 1:
        raise UserError(f"search options: first_per_class={first_per_class} (>= 1), growth={growth} (> 1), "
                        f"keep={keep} (in (0, 1)), refine_top={refine_top} (>= 1)")
    start = time.perf_counter()
    probe = {"solver": solver, "probe_options": probe_options}
    labels = train.labels
    num_classes = count_classes(labels, test.labels)
    fit_mask, val_idx = held_out_split(labels, val_fraction, seed)
    fit_rows = balanced_order(fit_mask.nonzero().flatten(), labels, seed)
    val_rows = balanced_order(val_idx, labels, seed)
    test_rows = torch.arange(len(test.labels))
    scorer = _Scorer(train, num_classes, probe, progress)
    grid_rows: list[SweepRow] = []
    timing: dict[str, float] = {}
    if mode == "grid":
        every = train.features(torch.cat([fit_rows, val_rows]), space.keys)
        tests = test.features(test_rows, space.keys)
        fit, val = torch.arange(len(fit_rows)), torch.arange(len(fit_rows), len(fit_rows) + len(val_rows))
        y = labels[torch.cat([fit_rows, val_rows])]
        for key in tqdm(space.keys, desc="grid", disable=not progress):
            row = score_setting(key, every[key], y, tests[key], test.labels, fit, val, solver, seed=seed,
                                probe_options=probe_options)
            grid_rows.append(row)
            scorer.scored.append(Scored(key.t, key.b, key.pool, row.dim, 0, len(fit_rows), len(val_rows),
                                        row.probe_val_top1, 0.0))
        final = best_row(grid_rows)
    else:
        chosen = _successive_halving(train, space, scorer, fit_rows, val_rows, labels, first_per_class, growth, keep,
                                     refine_top, timing)
        x = train.features(torch.cat([fit_rows, val_rows]), [chosen])[chosen]
        xt = test.features(test_rows, [chosen])[chosen]
        y = labels[torch.cat([fit_rows, val_rows])]
        t0 = time.perf_counter()
        final = score_setting(chosen, x, y, xt, test.labels, torch.arange(len(fit_rows)),
                              torch.arange(len(fit_rows), len(y)), solver, seed=seed, probe_options=probe_options)
        timing["final_cell_seconds"] = time.perf_counter() - t0
    seconds = time.perf_counter() - start
    passes = train.forward_passes + test.forward_passes
    choice = {"timestep": final.t, "block": final.b, "pool": final.pool, "held_out_top1": round(final.probe_val_top1, 4),
              "test_top1": round(final.probe_test_top1, 4), "seconds": round(seconds, 2), "forward_passes": passes,
              "settings_scored": len(scorer.scored), "search": mode, "solver": solver,
              "grid_settings": len(space.keys), "fit_images": len(fit_rows), "held_out_images": len(val_rows),
              "test_images": len(test_rows)}
    timing["probe_seconds"] = scorer.probe_seconds
    result = SearchResult(choice, scorer.scored, final, grid_rows, timing)
    deepest = space.blocks[-1]
    if mode == "auto" and isinstance(train, ExtractingSource) and train.passes_at_depth.get(deepest):
        timing["seconds_per_full_pass"] = train.seconds_at_depth[deepest] / train.passes_at_depth[deepest]
        choice["estimated_grid_seconds"] = round(estimated_grid_seconds(
            result, len(labels), len(test.labels), space, timing["seconds_per_full_pass"]), 1)
    choice["timing"] = {k: round(v, 3) for k, v in timing.items()}
    return result


def _successive_halving(train: FeatureSource, space: SearchSpace, scorer: _Scorer, fit_rows: torch.Tensor,
                        val_rows: torch.Tensor, labels: torch.Tensor, first_per_class: int, growth: float, keep: float,
                        refine_top: int, timing: dict[str, float]) -> FeatureKey:
    """The rungs of successive halving; returns the leader, scored on every fitting image."""
    classes = int(labels[fit_rows].unique().numel())
    sizes: list[int] = []
    per_class = float(first_per_class)
    while round(per_class) * classes < len(fit_rows):
        sizes.append(round(per_class) * classes)
        per_class *= growth
    sizes.append(len(fit_rows))
    train.retain(space.keys)
    dims: dict[FeatureKey, int] = {}
    alive = space.coarse()
    previous_leader: FeatureKey | None = None
    for rung, n in enumerate(sizes):
        fit, val = fit_rows[:n], val_rows[: len(val_rows) if n == len(fit_rows) else min(len(val_rows), n)]
        scores = scorer.score(alive, fit, val, rung)
        if rung == 0:
            scores = _refine(space, scorer, scores, fit, val, refine_top)
        dims.update({FeatureKey(s.t, s.b, s.pool): s.dim for s in scorer.scored})
        ranked = _leader(scores, dims)
        if rung == len(sizes) - 1:
            return ranked[0]
        leader = ranked[0]
        stable = (leader == previous_leader and len(ranked) > 1
                  and scores[leader] - scores[ranked[1]] > 2 * _standard_error(scores[leader], len(val)))
        if stable:
            timing["stopped_after_rung"] = rung
            alive = [leader]
            scorer.score(alive, fit_rows, val_rows, len(sizes) - 1)
            return leader
        previous_leader = leader
        alive = ranked[: max(1, math.ceil(len(ranked) * keep))]
        train.retain(alive)
    raise AssertionError("unreachable: the last rung returns")


def _refine(space: SearchSpace, scorer: _Scorer, scores: dict[FeatureKey, float], fit: torch.Tensor,
            val: torch.Tensor, refine_top: int) -> dict[FeatureKey, float]:
    """Score the unscored neighbours of the best ``refine_top`` settings until there are none."""
    while True:
        dims = {FeatureKey(s.t, s.b, s.pool): s.dim for s in scorer.scored}
        top = _leader(scores, dims)[:refine_top]
        new = sorted({n for k in top for n in space.neighbours(k)} - set(scores))
        if not new:
            return scores
        scores = {**scores, **scorer.score(new, fit, val, 0)}


def estimated_grid_seconds(result: SearchResult, train_images: int, test_images: int, space: SearchSpace,
                           seconds_per_pass: float) -> float:
    """What the grid would have taken: every (image, t) of both splits through the deepest block at
    ``seconds_per_pass`` (measured on the first rung, which runs that deep), and every setting scored like
    the final cell was."""
    passes = (train_images + test_images) * len(space.timesteps)
    return passes * seconds_per_pass + len(space.keys) * result.timing["final_cell_seconds"]
