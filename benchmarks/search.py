"""The automatic (t, b, pool) search against the full grid, side by side, as users run them.

Runs ``difrep sweep --search grid`` and ``difrep sweep --search auto`` one after the other (each its own
process, so its wall time is the command's, extraction included) on Fashion-MNIST: a class-balanced
training split (500 images a class by default, 10% held out to choose on) and the whole test split,
t in {5, 10, 25, 50, 100, 200, 400}, b in 1..19, pool in {1, 2, 4}, the L-BFGS probe. The issue's bars:
auto's choice within 1 point of the grid's on test accuracy, in at most 20% of the grid's wall time.

    python benchmarks/search.py                             # the shipped model (about 30 min on 2 cores)
    python benchmarks/search.py --model adm-fmnist-28 --random-init --out /tmp/search-random
    python benchmarks/search.py --grid-from OUT/grid        # reuse a finished grid run, time auto only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

TIMESTEPS = "5,10,25,50,100,200,400"
BLOCKS = ",".join(str(b) for b in range(1, 20))


def sweep(mode: str, args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, "-m", "difrep.cli.main", "sweep", "--model", args.model,
               *([] if args.random_init else ["--pretrained"]), "--data", "fashion-mnist", "--root", args.root,
               "--per-class", str(args.train_per_class), "--test-per-class", str(args.test_per_class),
               "--timesteps", args.timesteps, "--blocks", args.blocks, "--pool", args.pools, "--solver", "lbfgs",
               "--batch-size", "64", "--workers", "0", "--search", mode, "--out", str(out)]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL if not args.verbose else None,
                   env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads((out / "choice.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="adm-fmnist-28")
    p.add_argument("--random-init", action="store_true", help="the model's random initialisation (seed 0)")
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=1000)
    p.add_argument("--timesteps", default=TIMESTEPS)
    p.add_argument("--blocks", default=BLOCKS)
    p.add_argument("--pools", default="1,2,4")
    p.add_argument("--out", default="/tmp/difrep-search-benchmark")
    p.add_argument("--grid-from", type=Path, help="a finished grid run's folder (its choice.json) to compare with")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    grid = (json.loads((args.grid_from / "choice.json").read_text()) if args.grid_from
            else sweep("grid", args, out / "grid"))
    auto = sweep("auto", args, out / "auto")
    name = f"{args.model} ({'random init' if args.random_init else 'trained'})"
    print(f"\n{name}, Fashion-MNIST: {grid['fit_images']} fitting + {grid['held_out_images']} held-out training "
          f"images, {grid['test_images']} test images; {grid['grid_settings']} settings")
    print(f"{'search':<7} {'t':>4} {'b':>3} {'pool':>4} {'held-out':>8} {'test':>6} {'scored':>6} {'passes':>8} "
          f"{'seconds':>8} {'of grid':>8}")
    for mode, c in (("grid", grid), ("auto", auto)):
        print(f"{mode:<7} {c['timestep']:>4} {c['block']:>3} {c['pool']:>4} {c['held_out_top1']:8.1f} "
              f"{c['test_top1']:6.1f} {c['settings_scored']:>6} {c['forward_passes']:>8} {c['seconds']:8.0f} "
              f"{c['seconds'] / grid['seconds']:8.1%}")
    gap, ratio = grid["test_top1"] - auto["test_top1"], auto["seconds"] / grid["seconds"]
    print(f"auto's test top-1 is {gap:+.1f} points from the grid's choice (bar: within 1): "
          f"{'met' if abs(gap) <= 1 or gap < 0 else 'missed'}")
    print(f"auto took {ratio:.1%} of the grid's wall time (bar: at most 20%): {'met' if ratio <= 0.2 else 'missed'}")
    if "estimated_grid_seconds" in auto:
        print(f"auto's own estimate of the grid's time: {auto['estimated_grid_seconds']:.0f} s "
              f"(measured: {grid['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
