"""``difrep demo``: the paper's findings on Fashion-MNIST with the shipped model, in minutes on a CPU.

An alias of ``difrep study configs/studies/demo.yaml``: each option below sets one entry of that file."""

from __future__ import annotations

import argparse

from .common import int_list
from .study import run_file, study_file

OPTIONS = {"data": "data.root", "out": "out", "train_per_class": "data.train_per_class",
           "test_per_class": "data.test_per_class", "head_train_per_class": "vars.head_per_class",
           "timesteps": "vars.timesteps", "blocks": "stages.sweep.blocks", "seeds": "seeds", "epochs": "vars.epochs",
           "samples": "stages.samples.num", "checkpoint": "model.checkpoint"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="reproduce the paper's findings on Fashion-MNIST with the shipped model",
                       description="Runs configs/studies/demo.yaml: sweep t x b with a linear probe, compare with a "
                       "random-init copy and raw pixels, train linear, Attention, DifFormer and DifFeed heads over "
                       "three seeds, sample images, and write report.md. Settings are chosen on held-out training "
                       "images, never on the test split. Defaults are the study file's.")
    p.add_argument("--data", help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--out", help="output folder (default demo_out)")
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--test-per-class", type=int)
    p.add_argument("--head-train-per-class", type=int, help="training images per class for the heads")
    p.add_argument("--timesteps", type=int_list, help="noise steps of the sweep")
    p.add_argument("--blocks", type=int_list, help="blocks of the sweep (default: every block)")
    p.add_argument("--seeds", type=int_list, help="seeds of the head training")
    p.add_argument("--epochs", type=int, help="epochs of head training")
    p.add_argument("--samples", type=int)
    p.add_argument("--checkpoint", help="weights of adm-fmnist-28 to study instead of the shipped ones")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    overrides = [f"{key}={_yaml(getattr(args, option))}" for option, key in OPTIONS.items()
                 if getattr(args, option) is not None]
    if args.no_progress:
        overrides.append("run.progress=false")
    return run_file(study_file("demo"), overrides)


def _yaml(value: object) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
