"""``difrep demo``: the paper's findings on Fashion-MNIST with the shipped diffusion model, in minutes on a CPU."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..data import DEBIAN_FASHION_MNIST
from ..demo import DemoConfig, HeadProtocol, run_demo
from .common import int_list


def register(sub: argparse._SubParsersAction) -> None:
    defaults = DemoConfig()
    p = sub.add_parser("demo", help="reproduce the paper's findings on Fashion-MNIST with the shipped model",
                       description="Sweep t x b with a linear probe, compare with a random-init copy and raw pixels, "
                       "train linear, Attention, DifFormer and DifFeed heads over a few seeds, sample images, and "
                       "write report.md. Settings are chosen on held-out training images, never on the test split.")
    p.add_argument("--data", default=str(DEBIAN_FASHION_MNIST), help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--out", default=defaults.out, help="output folder (report.md, PNGs, CSVs, caches)")
    p.add_argument("--train-per-class", type=int, default=defaults.train_per_class)
    p.add_argument("--test-per-class", type=int, default=defaults.test_per_class)
    p.add_argument("--head-train-per-class", type=int, default=defaults.head_train_per_class,
                   help="training images per class for the heads (a part of the sweep's)")
    p.add_argument("--timesteps", type=int_list, default=defaults.timesteps, help="noise steps of the sweep")
    p.add_argument("--blocks", type=int_list, help="blocks of the sweep (default: every block)")
    p.add_argument("--seeds", type=int_list, default=defaults.seeds, help="seeds of the head training")
    p.add_argument("--epochs", type=int, default=defaults.protocol.epochs, help="epochs of head training")
    p.add_argument("--samples", type=int, default=defaults.samples)
    p.add_argument("--checkpoint", help="weights of adm-fmnist-28 to study instead of the shipped ones")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    cfg = DemoConfig(data_root=args.data, out=args.out, train_per_class=args.train_per_class,
                     test_per_class=args.test_per_class, head_train_per_class=args.head_train_per_class,
                     timesteps=args.timesteps, blocks=args.blocks, seeds=args.seeds,
                     protocol=replace(HeadProtocol(), epochs=args.epochs), samples=args.samples,
                     checkpoint=args.checkpoint, progress=not args.no_progress)
    run_demo(cfg)
    return 0
