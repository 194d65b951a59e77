"""The paper's findings as a study file declares them, each judged from the stages' numbers alone.

A finding names its kind, its claim and the numbers it compares. Scores are named ``stage/selector[:metric]``:
a train stage's run by id (``heads/attention``, ``final/shipped:bbox_AP``), a sweep's ``best`` or
``best@pool=4``, a ``pixels`` stage by its name alone. Kinds:

- ``compare`` (a, b): "yes" when a's mean beats b's by more than the larger std over seeds, "within noise" when
  by less, "no" otherwise; with one seed each, "yes/no (one seed)";
- ``beats`` (a, others): a beats every one of the others;
- ``middle_timestep`` (sweep): the held-out best t lies inside the swept grid;
- ``middle_block`` (sweep): the best b lies within a quarter of the blocks of the middle block;
- ``sensitivity`` (sweep): test accuracy varies least over pooling and most over blocks;
- ``knn_follows`` (knn, sweep): kNN's best block lies as near the probe's as ``middle_block`` allows;
- ``best_of`` (scores, expect): the expected score is the best of them, by more than the seed spread;
- ``cka_differs`` (cka): the two farthest blocks, or noise steps, have linear CKA below 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .stages.base import Result, Score, Stage


@dataclass(frozen=True)
class Finding:
    """A claim, whether it held here, the numbers that say so, and the stage whose section repeats it."""

    claim: str
    verdict: str
    evidence: str
    stage: str


class Judge:
    """Resolves score names against finished stages and judges each declared finding that they can test."""

    def __init__(self, stages: dict[str, Stage], results: dict[str, Result], source: str) -> None:
        self.stages, self.results, self.source = stages, results, source

    def score(self, name: str) -> Score | None:
        """The score ``stage/selector[:metric]``; None while its stage has not run."""
        stage, _, rest = name.partition("/")
        selector, _, metric = rest.partition(":")
        if stage not in self.stages:
            raise UserError(f"{self.source}: findings: {name!r} names no stage (stages: {', '.join(self.stages)})")
        if stage not in self.results:
            return None
        return self.stages[stage].score(self.results[stage], selector, metric or None)

    def result(self, spec: dict[str, Any], key: str) -> Result | None:
        stage = spec.get(key)
        if stage not in self.stages:
            raise UserError(f"{self.source}: finding {spec['claim']!r}: {key}={stage!r} names no stage")
        return self.results.get(stage)

    def judge(self, spec: dict[str, Any]) -> Finding | None:
        kind = spec["kind"]
        if kind not in KINDS:
            raise UserError(f"{self.source}: finding {spec['claim']!r}: unknown kind {kind!r}; use {', '.join(KINDS)}")
        return KINDS[kind](self, spec)

    def all(self, specs: list[dict[str, Any]]) -> list[Finding]:
        return [f for f in (self.judge(s) for s in specs) if f is not None]


def _section(spec: dict[str, Any], default: str) -> str:
    return spec.get("section") or default.partition("/")[0]


def _cmp(judge: Judge, spec: dict[str, Any]) -> Finding | None:
    a, b = judge.score(spec["a"]), judge.score(spec["b"])
    if a is None or b is None:
        return None
    gap, spread = a.mean - b.mean, max(a.std, b.std)
    stage = _section(spec, spec["a"])
    if max(len(a.values), len(b.values)) < 2:  # no estimate of the noise at all
        return Finding(spec["claim"], ("yes" if gap > 0 else "no") + " (one seed)",
                       f"{a.label} {a.mean:.1f}% vs {b.label} {b.mean:.1f}% (gap {gap:+.1f}; one seed each, no noise "
                       "estimate)", stage)
    verdict = "yes" if gap > spread else "within noise" if gap > 0 else "no"
    return Finding(spec["claim"], verdict, f"{a.label} {a.mean:.1f}% vs {b.label} {b.mean:.1f}% (gap {gap:+.1f}, "
                   f"larger std over seeds {spread:.1f})", stage)


def _beats(judge: Judge, spec: dict[str, Any]) -> Finding | None:
    a, others = judge.score(spec["a"]), [judge.score(o) for o in spec["others"]]
    if a is None or any(o is None for o in others):
        return None
    held = all(a.mean > o.mean for o in others if o is not None)
    vs = ", ".join(f"{o.label} {o.mean:.1f}%" for o in others if o is not None)
    return Finding(spec["claim"], "yes" if held else "no", f"{a.label} {a.mean:.1f}% vs {vs}",
                   _section(spec, spec["others"][0]))


def _middle_timestep(judge: Judge, spec: dict[str, Any]) -> Finding | None:
    r = judge.result(spec, "sweep")
    if r is None:
        return None
    ts, best = r["timesteps"], r["best"]
    inside = ts[0] < best["t"] < ts[-1]
    return Finding(spec["claim"], "yes" if inside else "no", f"held-out best t={best['t']} of {ts} "
                   f"({'inside' if inside else 'at an end of'} the grid)", _section(spec, spec["sweep"]))


def _reach(r: Result) -> float:
    return r["num_blocks"] / 4


def _middle_block(judge: Judge, spec: dict[str, Any]) -> Finding | None:
    r = judge.result(spec, "sweep")
    if r is None:
        return None
    best, middle, n = r["best"], r["middle_block"], r["num_blocks"]
    return Finding(spec["claim"], "yes" if abs(best["b"] - middle) <= _reach(r) else "no",
                   f"held-out best b={best['b']}; middle block {middle} of 1..{n} (within {_reach(r):.1f})",
                   _section(spec, spec["sweep"]))


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if values else 0.0


def _sensitivity(judge: Judge, spec: dict[str, Any]) -> Finding | None:
    r = judge.result(spec, "sweep")
    if r is None or not r["pool_rows"]:
        return None
    best, rows = r["best"], r["rows"]
    ranges = {"pool": _spread([x["probe_test_top1"] for x in r["pool_rows"] if x["b"] == best["b"]]),
              "block": _spread([x["probe_test_top1"] for x in rows if x["t"] == best["t"] and x["pool"] == best["pool"]]),
              "t": _spread([x["probe_test_top1"] for x in rows if x["b"] == best["b"] and x["pool"] == best["pool"]])}
    order = sorted(ranges, key=ranges.__getitem__)
    return Finding(spec["claim"], "yes" if order[0] == "pool" and order[-1] == "block" else "no",
                   "test top-1 range over " + ", ".join(f"{k} {v:.1f}" for k, v in ranges.items())
                   + f" points (at the best t={best['t']}, b={best['b']})", _section(spec, spec["sweep"]))


def _knn_follows(judge: Judge, spec: dict[str, Any]) -> Finding | None:
    knn, sweep = judge.result(spec, "knn"), judge.result(spec, "sweep")
    if knn is None or sweep is None:
        return None
    from .stages.probes import ks_of

    k = min(ks_of(knn["rows"]))
    kbest = max(knn["rows"], key=lambda x: x[f"k{k}_top1"])
    best = sweep["best"]
    return Finding(spec["claim"], "yes" if abs(kbest["b"] - best["b"]) <= _reach(sweep) else "no",
                   f"the best block by test kNN (k={k}) is b={kbest['b']} ({kbest[f'k{k}_top1']:.1f}%), the probe's "
                   f"held-out best b={best['b']} (within {_reach(sweep):.1f} counts)", _section(spec, spec["knn"]))


def _best_of(judge: Judge, spec: dict[str, Any]) -> Finding | None:
    scores = {name: judge.score(name) for name in spec["scores"]}
    found = {k: v for k, v in scores.items() if v is not None}
    if len(found) < 2 or spec["expect"] not in found:
        return None
    ranked = sorted(found, key=lambda k: -found[k].mean)
    top, rest = found[ranked[0]], found[ranked[1]]
    gap, spread = top.mean - rest.mean, max(top.std, rest.std)
    verdict = ("yes" if gap > spread else "within noise") if ranked[0] == spec["expect"] else "no"
    return Finding(spec["claim"], verdict, ", ".join(f"{s.label} {s.mean:.1f}" for s in found.values())
                   + f" (gap of the best to the next {gap:+.1f}, larger std over seeds {spread:.1f})",
                   _section(spec, spec["expect"]))


def _cka_differs(judge: Judge, spec: dict[str, Any]) -> Finding | None:
    c = judge.result(spec, "cka")
    if c is None:
        return None
    far_b, far_t = c["across_blocks"][0][-1], c["across_timesteps"][0][-1]
    return Finding(spec["claim"], "yes" if min(far_b, far_t) < 0.5 else "no",
                   f"linear CKA b{c['blocks'][0]}-b{c['blocks'][-1]} {far_b:.2f}, t{c['timesteps'][0]}-"
                   f"t{c['timesteps'][-1]} {far_t:.2f} (below 0.5 counts as different)", _section(spec, spec["cka"]))


KINDS: dict[str, Callable[[Judge, dict[str, Any]], Finding | None]] = {
    "compare": _cmp, "beats": _beats, "middle_timestep": _middle_timestep, "middle_block": _middle_block,
    "sensitivity": _sensitivity, "knn_follows": _knn_follows, "best_of": _best_of, "cka_differs": _cka_differs,
}
