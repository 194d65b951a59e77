"""report.md of the study: every table, figure and command, and a verdict on each of the paper's findings
computed from the numbers alone. Stages that have not run yet are listed as such."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

Result = dict[str, Any]


class Finding(NamedTuple):
    """One of the paper's findings, whether it held here, the numbers that say so, and the stage whose table
    tests it (the report repeats each finding under that table)."""

    claim: str
    verdict: str
    evidence: str
    stage: str


Score = tuple[str, float, float, int]  # name, mean, std over seeds, number of seeds


def _verdict(gap: float, spread: float) -> str:
    """"yes" when the gap of the means exceeds the larger std over seeds, "within noise" when it is positive but
    smaller, "no" otherwise (the demo's rule)."""
    return "yes" if gap > spread else "within noise" if gap > 0 else "no"


def _cmp(claim: str, a: Score, b: Score, stage: str) -> Finding:
    gap, spread = a[1] - b[1], max(a[2], b[2])
    if max(a[3], b[3]) < 2:  # no estimate of the noise at all
        return Finding(claim, ("yes" if gap > 0 else "no") + " (one seed)",
                       f"{a[0]} {a[1]:.1f}% vs {b[0]} {b[1]:.1f}% (gap {gap:+.1f}; one seed each, no noise estimate)", stage)
    return Finding(claim, _verdict(gap, spread), f"{a[0]} {a[1]:.1f}% vs {b[0]} {b[1]:.1f}% (gap {gap:+.1f}, larger "
                   f"std over seeds {spread:.1f})", stage)


def _ks(rows: list[Result]) -> list[int]:
    """The k of a kNN table's columns (``k20_top1`` ...)."""
    return sorted({int(key[1:].split("_")[0]) for key in rows[0] if key.startswith("k") and "_top" in key})


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if values else 0.0


def _score(h: Result) -> Score:
    return (h["name"], h["top1"]["mean"], h["top1"]["std"], len(h["top1"]["values"]))


def _head(heads: list[Result], name: str) -> Score | None:
    h = next((h for h in heads if h["name"] == name and h["top1"]["values"]), None)
    return None if h is None else _score(h)


def findings(r: dict[str, Result], num_blocks: int, middle: int) -> list[Finding]:
    """Each of the paper's findings the finished stages can test, with its verdict and evidence."""
    out: list[Finding] = []
    if "sweep" in r:
        best, rows, pools = r["sweep"]["best"], r["sweep"]["rows"], r["sweep"]["pool_rows"]
        ts = sorted({x["t"] for x in rows})
        if "controls" in r:
            rand, pix = r["controls"]["random_best"], r["controls"]["pixels"]
            held = best["probe_test_top1"] > max(rand["probe_test_top1"], pix["probe_test_top1"])
            out.append(Finding("Trained diffusion features beat a random-init copy and raw pixels (linear probe)",
                               "yes" if held else "no", f"{best['probe_test_top1']:.1f}% (t={best['t']}, b={best['b']}) "
                               f"vs random init {rand['probe_test_top1']:.1f}% (t={rand['t']}, b={rand['b']}), pixels "
                               f"{pix['probe_test_top1']:.1f}%", "controls"))
        inside = ts[0] < best["t"] < ts[-1]
        out.append(Finding("A middle noise step is best (Figure 3)", "yes" if inside else "no",
                           f"held-out best t={best['t']} of {ts}", "sweep"))
        reach = num_blocks / 4
        out.append(Finding("Middle blocks, near the bottleneck, are best (Figure 3)",
                           "yes" if abs(best["b"] - middle) <= reach else "no",
                           f"held-out best b={best['b']}; middle block {middle} of 1..{num_blocks} (within {reach:.1f})",
                           "sweep"))
        by_pool = [x["probe_test_top1"] for x in pools if x["b"] == best["b"]]
        by_block = [x["probe_test_top1"] for x in rows if x["t"] == best["t"] and x["pool"] == best["pool"]]
        by_t = [x["probe_test_top1"] for x in rows if x["b"] == best["b"] and x["pool"] == best["pool"]]
        ranges = {"pool": _spread(by_pool), "block": _spread(by_block), "t": _spread(by_t)}
        order = sorted(ranges, key=ranges.get)  # type: ignore[arg-type]
        out.append(Finding("Least sensitive to pooling, most to the block (Figure 3)",
                           "yes" if order[0] == "pool" and order[-1] == "block" else "no",
                           "test top-1 range over " + ", ".join(f"{k} {v:.1f}" for k, v in ranges.items())
                           + f" points (at the best t={best['t']}, b={best['b']})", "sweep"))
        if "knn" in r:
            knn = r["knn"]["rows"]
            k = min(_ks(knn))
            kbest = max(knn, key=lambda x: x[f"k{k}_top1"])
            out.append(Finding("kNN follows the linear probe's trends (Table 9)",
                               "yes" if abs(kbest["b"] - best["b"]) <= reach else "no",
                               f"the best block by test kNN (k={k}) is b={kbest['b']} ({kbest[f'k{k}_top1']:.1f}%), the "
                               f"probe's held-out best b={best['b']} (within {reach:.1f} counts)", "knn"))
    if "heads" in r:
        heads, linear = r["heads"]["heads"], r["heads"]["linear"]
        lin = ("linear probe", linear["probe_test_top1"], 0.0, 1)
        att, dform = _head(heads, "Attention"), _head(heads, "DifFormer")
        feeds = [h for h in heads if h["name"].startswith("DifFeed") and h["top1"]["values"]]
        same = next((h for h in heads if h["name"].startswith("Attention (") and h["top1"]["values"]), None)
        if att:
            out.append(_cmp("The Attention head beats the linear probe (Table 1)", att, lin, "heads"))
        same_pool = r["heads"].get("linear_same_pool")
        if att and same_pool and same_pool["pool"] != linear["pool"]:
            size = same_pool["pool"]
            out.append(_cmp(f"The Attention head beats the linear probe on the same {size}x{size} pooling as its tokens "
                            "(Table 1)", att, (f"linear probe, pool {size}", same_pool["probe_test_top1"], 0.0, 1), "heads"))
        if att and dform:
            out.append(_cmp("Fusion (DifFormer) beats the Attention head (Table 1)", dform, att, "heads"))
        bottleneck = _head(heads, "DifFeed (bottleneck)")
        if bottleneck and same:
            out.append(_cmp("Feedback (DifFeed) beats the Attention head on the same images (Table 1)", bottleneck,
                            _score(same), "heads"))
        if len(feeds) > 1:
            top = max(feeds, key=lambda h: h["top1"]["mean"])
            rest = max((h for h in feeds if h is not top), key=lambda h: h["top1"]["mean"])
            gap, spread = top["top1"]["mean"] - rest["top1"]["mean"], max(top["top1"]["std"], rest["top1"]["std"])
            held = "bottleneck" in top["name"]
            out.append(Finding("The bottleneck feedback strategy is best (Table 4)",
                               ("yes" if gap > spread else "within noise") if held else "no",
                               ", ".join(f"{h['name'][9:-1]} {h['top1']['mean']:.1f}" for h in feeds)
                               + f" (gap of the best to the next {gap:+.1f}, larger std over seeds {spread:.1f})", "heads"))
        for other in ("MLP", "CNN"):
            o = _head(heads, other)
            if att and o:
                out.append(_cmp(f"The Attention head beats the {other} head (Tables 11-12)", att, o, "heads"))
    if "semi" in r:
        for frac in r["semi"]["fractions"]:
            heads = frac["heads"]
            lin = _head(heads, f"Linear, {frac['percent']}%")
            for name in ("DifFormer", "DifFeed (bottleneck)"):
                h = _head(heads, f"{name}, {frac['percent']}%")
                if lin and h:
                    out.append(_cmp(f"{name} beats GD (linear) with {frac['percent']}% of the labels, fine-tuned (Table 5)",
                                    h, lin, "semi"))
    if "cka" in r:
        c = r["cka"]
        far_b, far_t = c["across_blocks"][0][-1], c["across_timesteps"][0][-1]
        diverse = min(far_b, far_t) < 0.5
        out.append(Finding("Features differ greatly across blocks and timesteps (Figure 5)", "yes" if diverse else "no",
                           f"linear CKA b{c['blocks'][0]}-b{c['blocks'][-1]} {far_b:.2f}, t{c['timesteps'][0]}-"
                           f"t{c['timesteps'][-1]} {far_t:.2f} (below 0.5 counts as different)", "cka"))
    return out


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *["| " + " | ".join(str(x) for x in row) + " |" for row in rows], ""]


def _heads_table(heads: list[Result]) -> list[str]:
    rows = []
    for h in heads:
        v = h["top1"]["values"]
        score = (f"{h['top1']['mean']:.1f} ± {h['top1']['std']:.1f}" if len(v) > 1
                 else f"{h['top1']['mean']:.1f} (one seed)" if v else "not run yet")
        rows.append([h["name"], h["setting"], score,
                     ", ".join(f"{x:.1f}" for x in v), f"{h['parameters']:,}",
                     f"{min(x['seconds'] for x in h['runs']):.0f}" if h["runs"] else "-"])
    # a run's wall time, fastest seed: the others may have shared the CPU or been paused
    return _table(["head", "setting", "test top-1 (%), mean ± std", "per seed", "trained parameters",
                   "seconds a run (fastest seed)"], rows)


def _findings_table(tested: list[Finding]) -> list[str]:
    return _table(["finding of the paper", "held here?", "evidence"], [[f.claim, f.verdict, f.evidence] for f in tested])


def _held(tested: list[Finding], stage: str) -> list[str]:
    """The findings a section's table tests, repeated under it."""
    mine = [f for f in tested if f.stage == stage]
    return ["What this tests of the paper's findings:", "", *_findings_table(mine)] if mine else []


def _scope(cfg: dict[str, Any]) -> str:
    d, c = cfg["data"], cfg["model"]["checkpoint"]
    weights = f"weights `{c}`" if c else "the shipped weights"
    train = "all 60,000" if d["train_per_class"] is None else f"{10 * d['train_per_class']:,}"
    test = "all 10,000" if d["test_per_class"] is None else f"{10 * d['test_per_class']:,}"
    return (f"Model: `adm-fmnist-28`, {weights}. Data: {train} training and {test} test images of Fashion-MNIST; every "
            f"setting is chosen on a held-out, class-balanced {d['val_fraction']:.0%} of the training images.")


def write_report(out: Path, r: dict[str, Result], cfg: dict[str, Any], num_blocks: int = 19, middle: int = 10) -> Path:
    """``out/report.md`` from the stages' results (``r``: stage -> result) and the study's config."""
    lines = ["# difrep study: the paper's protocols on Fashion-MNIST", "", _scope(cfg), "", "## Findings", ""]
    tested = findings(r, num_blocks, middle)
    lines += _findings_table(tested) if tested else ["None of the stages run so far tests a finding.", ""]
    if "samples" in r:
        s = r["samples"]
        rec = s["recognition"]
        ddpm = rec.get("ddpm_samples")
        lines += ["## Samples", "", f"DDIM, {s['steps']} steps (the first {min(s['samples'], 64)} of {s['samples']}):", "",
                  f"![DDIM samples](samples/samples_ddim{s['steps']}.png)", ""]
        if ddpm:
            lines += [f"DDPM, {s['ddpm_steps']} steps, learned variance ({s['ddpm_samples']} samples):", "",
                      f"![DDPM samples](samples/samples_ddpm{s['ddpm_steps']}.png)", ""]
        lines += _table(["measure", f"DDIM-{s['steps']} samples", f"DDPM-{s['ddpm_steps']} samples" if ddpm else "-",
                         "real test images"], [
            [f"mean absolute channel difference of the first {min(s['samples'], 64)}"
             + (" (a one-channel model: 0 by construction)" if s["channels"] == 1 else ""),
             f"{s['channel_disagreement']:.4f}", "-", "0"],
            [f"named with confidence >= {s['threshold']:.0%} by the reference classifier "
             f"({s['classifier_test_top1']:.1f}% test top-1)", f"{rec['samples']['confident_rate']:.1f}%",
             f"{ddpm['confident_rate']:.1f}%" if ddpm else "-", f"{rec['real']['confident_rate']:.1f}%"],
            ["mean top confidence", f"{rec['samples']['mean_confidence']:.1f}%",
             f"{ddpm['mean_confidence']:.1f}%" if ddpm else "-", f"{rec['real']['mean_confidence']:.1f}%"],
            ["images named each class", rec["samples"]["class_counts"], ddpm["class_counts"] if ddpm else "-",
             rec["real"]["class_counts"]]])
    if "sweep" in r:
        best = r["sweep"]["best"]
        lines += ["## Linear probe over t, b and pool (Figures 3-4)", "",
                  "![held-out sweep](sweep/sweep_val.png)", "", "![test sweep](sweep/sweep_test.png)", "",
                  "![pools](sweep/pools_test.png)", "",
                  f"Chosen on held-out images: t={best['t']}, b={best['b']}, pool {best['pool']}: test top-1 "
                  f"{best['probe_test_top1']:.1f}%, top-5 {best['probe_test_top5']:.1f}%. Every cell: `sweep/sweep.csv`, "
                  "`sweep/pools.csv`.", ""]
        lines += _held(tested, "sweep")
    if "knn" in r:
        rows = r["knn"]["rows"]
        ks = _ks(rows)
        lines += [f"## kNN on globally pooled features, t={r['knn']['t']} (Table 9)", ""]
        lines += _table(["b", *[f"top-{n} @{k}" for k in ks for n in (1, 5)]],
                        [[x["b"], *[f"{x[f'k{k}_top{n}']:.1f}" for k in ks for n in (1, 5)]] for x in rows])
        lines += _held(tested, "knn")
    if "controls" in r:
        c = r["controls"]
        rb, pix = c["random_best"], c["pixels"]
        lines += ["## Controls: random-init copy and raw pixels, same probe and kNN", ""]
        lines += _table(["features", "setting", "probe held-out", "probe test", "kNN k=20 test"], [
            ["random-init copy", f"t={rb['t']}, b={rb['b']}, pool {rb['pool']}", f"{rb['probe_val_top1']:.1f}",
             f"{rb['probe_test_top1']:.1f}", f"{rb['knn20_test_top1']:.1f}"],
            [f"raw pixels ({pix['dim']})", "-", f"{pix['probe_val_top1']:.1f}", f"{pix['probe_test_top1']:.1f}",
             f"{pix['k20_top1']:.1f}"]])
        lines += _held(tested, "controls")
    if "heads" in r:
        lines += ["## Heads on the frozen U-Net (Tables 1, 4, 11-12)", ""]
        lines += _heads_table(r["heads"]["heads"])
        lines += ["```bash", *[h["command"] for h in r["heads"]["heads"]], "```", ""]
        lines += _held(tested, "heads")
    if "semi" in r:
        percents = " and ".join(f"{f['percent']}%" for f in r["semi"]["fractions"])
        lines += [f"## Semi-supervised: {percents} of the labels, U-Net fine-tuned (Table 5)", ""]
        for frac in r["semi"]["fractions"]:
            lines += [f"### {frac['percent']}% ({frac['per_class']} images a class)", ""]
            lines += _heads_table(frac["heads"])
        lines += _held(tested, "semi")
    if "cka" in r:
        lines += [f"## Linear CKA on {r['cka']['images']} test images (Figure 5)", "",
                  "![across blocks](cka/cka_blocks.png)", "", "![across timesteps](cka/cka_timesteps.png)", "",
                  "![against random init](cka/cka_random.png)", ""]
        lines += _held(tested, "cka")
    missing = [stage for stage in ("samples", "sweep", "knn", "controls", "cka", "heads", "semi") if stage not in r]
    if missing:
        lines += [f"Stages not run yet: {', '.join(missing)} (`difrep study` with the same config continues).", ""]
    lines += ["## Time", ""]
    lines += _table(["stage", "seconds of computing"], [[k, f"{v['stage_seconds']:.0f}"] for k, v in r.items()])
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
