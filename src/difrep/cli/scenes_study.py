"""``difrep scenes-study``: an alias of ``difrep study configs/studies/scenes_{segmentation,detection}.yaml``."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .study import run_file, study_file

OPTIONS = {"scenes": "data.root", "fashion_root": "data.fashion_root", "config": "vars.config", "out": "out",
           "iterations": "vars.iterations", "select_iterations": "vars.select_iterations", "max_test": "vars.max_test",
           "timestep": "vars.timestep", "block": "vars.block"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scenes-study", help="segmentation or detection on the Fashion-MNIST scenes (docs/dense.md)",
                       description="Runs configs/studies/scenes_segmentation.yaml (--task segmentation: t and b chosen "
                       "on held-out training scenes, then UperNet on the shipped model's frozen features at one block "
                       "and four, on a random-init copy, and on a ResNet-18 from pixels) or "
                       "configs/studies/scenes_detection.yaml (--task detection: Mask R-CNN on the shipped model's "
                       "frozen features and a random-init copy's at --timestep and --block). Several seeds; rerun to "
                       "resume. Defaults are the study file's.")
    p.add_argument("--task", choices=["segmentation", "detection"], default="segmentation")
    p.add_argument("--scenes", required=True, help="folder written by difrep data make-scenes")
    p.add_argument("--fashion-root", help="segmentation: Fashion-MNIST, for the held-out scenes")
    p.add_argument("--config", help="the dense training config (default: configs/scenes_upernet_fmnist.yaml, "
                   "configs/scenes_maskrcnn_fmnist.yaml)")
    p.add_argument("--out", help="study folder (default: studies/scenes_segmentation, studies/scenes_detection)")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    p.add_argument("--iterations", type=int, help="per run (default 300 for segmentation, 400 for detection)")
    p.add_argument("--select-iterations", type=int, help="segmentation: per held-out selection run (default 150)")
    p.add_argument("--max-test", type=int, help="test scenes evaluated (default 200)")
    p.add_argument("--timestep", type=int, help="detection: the noise step t (default 50, the segmentation study's "
                   "choice: its report)")
    p.add_argument("--block", type=int, help="detection: the block b (default 10), likewise")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise UserError(f"unexpected arguments {extra}")
    if args.task == "segmentation" and (args.timestep is not None or args.block is not None):
        raise UserError("--timestep and --block are for --task detection; the segmentation study chooses t and b "
                        "on held-out training scenes")
    if args.task == "detection" and (args.fashion_root or args.select_iterations):
        raise UserError("--fashion-root and --select-iterations are for --task segmentation")
    overrides = [f"{key}={getattr(args, option)}" for option, key in OPTIONS.items() if getattr(args, option) is not None]
    if args.seeds is not None:
        overrides.append(f"seeds=[{','.join(map(str, range(args.seeds)))}]")
    return run_file(study_file(f"scenes_{args.task}"), overrides)
