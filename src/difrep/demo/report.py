"""report.md: the demo's tables and figures, and a plain verdict on each of the paper's findings."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pm(mean: float, std: float, n: int) -> str:
    return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"


def findings(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(finding, verdict, evidence) for each of the paper's claims, from the summary's numbers alone.

    Head comparisons say "yes" only when the gap of the means exceeds the larger seed spread (std),
    "within noise" when it is positive but smaller, "no" otherwise."""
    best, rand, pix = s["best"], s["random_best"], s["pixels"]
    heads = {h["name"]: h for h in s["heads"]}
    ts = sorted({r["t"] for r in s["rows"]})
    n, middle = s["num_blocks"], s["middle_block"]
    reach = n / 4
    out = []
    beat = best["probe_test_top1"] > rand["probe_test_top1"] and best["probe_test_top1"] > pix["test_top1"]
    out.append(("Trained diffusion features beat a random-init copy and raw pixels (L-BFGS logistic regression)", _yes(beat),
                f"test top-1 {best['probe_test_top1']:.1f}% (t={best['t']}, b={best['b']}) vs random init "
                f"{rand['probe_test_top1']:.1f}% (t={rand['t']}, b={rand['b']}) and pixels {pix['test_top1']:.1f}%"))
    mid_t = ts[0] < best["t"] < ts[-1]
    out.append(("A middle noise step is best", _yes(mid_t),
                f"held-out best t={best['t']} in the grid {ts} ({'inside' if mid_t else 'at an end of'} the grid)"))
    mid_b = abs(best["b"] - middle) <= reach
    out.append(("Middle blocks (near the bottleneck) are best", _yes(mid_b),
                f"held-out best b={best['b']}; the middle block is {middle} of 1..{n}, 'middle' meaning within "
                f"{reach:.1f} blocks of it"))

    def cmp(a: str, b: str, claim: str) -> tuple[str, str, str]:
        ha, hb = heads[a], heads[b]
        gap = ha["mean"] - hb["mean"]
        spread = max(ha["std"], hb["std"])
        clear = "more" if gap > spread else "less"
        verdict = "yes" if gap > spread else "within noise" if gap > 0 else "no"
        return (claim, verdict, f"{a} {ha['mean']:.1f}% vs {b} {hb['mean']:.1f}% (gap {gap:+.1f} points, "
                f"{clear} than the larger seed spread {spread:.1f})")

    out.append(cmp("Attention", "Logistic regression (L-BFGS)", "The Attention head beats a converged linear classifier"))
    out.append(cmp("DifFormer", "Attention", "Fusion (DifFormer) beats the Attention head"))
    out.append(cmp("DifFeed", "Attention", "Feedback (DifFeed) beats the Attention head"))
    return out


def _yes(held: bool) -> str:
    return "yes" if held else "no"


def _study_lines(s: dict[str, Any]) -> list[str]:
    """Sections 1-2: the findings table, the sweep and the controls."""
    cfg, best, rand, pix = s["config"], s["best"], s["random_best"], s["pixels"]
    lines = [
        "# difrep demo: the paper's findings on Fashion-MNIST, with difrep's own diffusion model",
        "",
        f"Model: `adm-fmnist-28`, the ADM U-Net difrep ships ({s['num_blocks']} blocks, middle block "
        f"{s['middle_block']}), trained as an unconditional DDPM on the Fashion-MNIST training images without "
        f"labels. Data: {cfg['train_per_class']} training and {cfg['test_per_class']} test images per class "
        "(seeded, class-balanced). Every setting was chosen on a held-out 10% of the training images; "
        "the test images were only measured.",
        "",
        "## Findings",
        "",
        "| finding of the paper | held here? | evidence |",
        "| --- | --- | --- |",
    ]
    for claim, verdict, evidence in findings(s):
        lines.append(f"| {claim} | {verdict} | {evidence} |")
    lines += [
        "",
        "## 1. Linear-probe sweep over noise step t and block b",
        "",
        "L-BFGS logistic regression on pooled features (L2 chosen on the held-out images). Red frame: the "
        "held-out best, which the heads below use.",
        "",
        "![held-out sweep](sweep_trained.png)",
        "",
        f"Best on held-out images: t={best['t']}, b={best['b']}, pool {best['pool']}: held-out "
        f"{best['probe_val_top1']:.1f}%, test {best['probe_test_top1']:.1f}% (kNN k=20: {best['knn20_test_top1']:.1f}%).",
        "Test accuracies of every cell: `sweep_trained_test.png`, `sweep_trained.csv`.",
        "",
        "## 2. Controls: the same probe on a random-init copy and on pixels",
        "",
        "The random-init copy is the architecture as ADM initialises it (seed 0), which zeroes the last layer of "
        "every residual branch, so its blocks start close to identity maps of the first convolution's output.",
        "",
        "| features | setting (chosen on held-out) | held-out top-1 | test top-1 |",
        "| --- | --- | --- | --- |",
        f"| trained `adm-fmnist-28` | t={best['t']}, b={best['b']}, pool {best['pool']} | "
        f"{best['probe_val_top1']:.1f} | {best['probe_test_top1']:.1f} |",
        f"| random-init copy (every block, t in {sorted({r['t'] for r in s['random_rows']})}) | t={rand['t']}, "
        f"b={rand['b']}, pool {rand['pool']} | {rand['probe_val_top1']:.1f} | {rand['probe_test_top1']:.1f} |",
        f"| raw pixels ({pix['dim']} values) | - | {pix['val_top1']:.1f} | {pix['test_top1']:.1f} |",
        "",
    ]
    return lines


def _heads_lines(s: dict[str, Any]) -> list[str]:
    """Section 3: the heads over seeds, and the commands that repeat them."""
    cfg = s["config"]
    seeds = cfg["seeds"]
    lines = [
        "## 3. Heads at the recommended settings",
        "",
        f"Every head learns from the same {cfg['head_train_per_class']} training images per class (a seeded, "
        "class-balanced subset). The linear baseline is L-BFGS logistic regression (not the paper's SGD probe), run "
        "to convergence on 2x2-pooled features with L2 chosen on a held-out 10% of those images, so it needs no seed. "
        f"The other heads are trained by difrep's own engine (`difrep train`), {cfg['protocol']['epochs']} epochs "
        f"with AdamW (lr {cfg['protocol']['lr']}, weight decay {cfg['protocol']['weight_decay']}, cosine schedule "
        f"over the epochs, batch {cfg['protocol']['batch_size']}), once per seed {seeds}, frozen U-Net: Attention "
        "and DifFormer on a feature cache of the images (fixed per-image noise, no flips), DifFeed on the images "
        "themselves (new noise every epoch, no flips). Their configs are in `heads/*.yaml`; the commands below "
        "repeat every number. "
        f"Transformer heads: width {cfg['head_dim']}, {cfg['head_depth']} blocks, {cfg['head_heads']} heads, "
        f"tokens pooled to at most {cfg['head_tokens']}x{cfg['head_tokens']} (the paper's 1024/16 are for 256-pixel "
        "images and a 553M-parameter U-Net).",
        "",
        f"| head | setting | test top-1 (%), mean ± std over {len(seeds)} seeds | per seed | trainable parameters | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for h in s["heads"]:
        per_seed = ", ".join(f"{a:.1f}" for a in h["test_top1"])
        lines.append(f"| {h['name']} | {h['setting']} | {_pm(h['mean'], h['std'], len(seeds))} | {per_seed} | "
                     f"{h['parameters']:,} | {h['seconds']:.0f} |")
    return [*lines, "", "Each number again (from the folder the demo wrote to):", "", "```bash",
            *[h.get("command", "") for h in s["heads"]], "```", ""]


def write_report(s: dict[str, Any], path: Path) -> None:
    cfg = s["config"]
    lines = [*_study_lines(s), *_heads_lines(s)]
    lines += [
        "## 4. Samples from the same model (the paper's unified claim: one model generates and represents)",
        "",
        f"{cfg['samples']} images, DDIM with {cfg['sample_steps']} steps, seed 0.",
        "",
        "![samples](samples.png)",
        "",
        "## Time",
        "",
        "| stage | seconds |",
        "| --- | --- |",
        *[f"| {k} | {v:.0f} |" for k, v in s["seconds"].items()],
        "",
    ]
    path.write_text("\n".join(lines))
