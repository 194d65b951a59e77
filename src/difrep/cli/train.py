"""``difrep train CONFIG [section.option=value ...]`` and ``difrep evaluate CHECKPOINT [...]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from ..dense import (
    DetectionConfig,
    SegmentationConfig,
    evaluate_detection_checkpoint,
    evaluate_segmentation_checkpoint,
    train_detection,
    train_segmentation,
)
from ..engine import load_run_state
from ..errors import UserError
from ..training import TrainConfig, evaluate_checkpoint, load_config, train
from ..utils.config import parse_override, read_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a head (resumes from run.out/last.pt)",
                       description="Train a head on diffusion features (task: classification, the default, or "
                       "segmentation: UperNet, or detection: Mask R-CNN). CONFIG is a YAML file (see configs/); "
                       "any option can be overridden as section.option=value, e.g. optim.lr=0.01 "
                       "features.blocks=[19,24]. Under torchrun, training is data-parallel.")
    p.add_argument("config", nargs="?", help="YAML config (defaults apply to what it leaves out)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run_train, accepts_extra=True)

    p = sub.add_parser("evaluate", help="evaluate a training checkpoint on its test split")
    p.add_argument("checkpoint")
    p.add_argument("--out", help="write the metrics as JSON (default: print)")
    p.set_defaults(run=run_evaluate, accepts_extra=True)


TASKS = {"classification": TrainConfig, "segmentation": SegmentationConfig, "detection": DetectionConfig}
EVALUATORS = {"classification": evaluate_checkpoint, "segmentation": evaluate_segmentation_checkpoint,
              "detection": evaluate_detection_checkpoint}


def config_from_args(args: argparse.Namespace, extra: list[str], schema: type | None = None) -> Any:
    """CONFIG plus ``section.option=value`` overrides (CONFIG may be left out); None once --print-config printed it.
    Without ``schema``, the config's ``task`` chooses it (classification by default)."""
    config = args.config
    if config is not None and "=" in config and not Path(config).exists():
        config, extra = None, [config, *extra]  # no config file: the first argument is an override
    if schema is None:
        task = read_options(config, extra).get("task", "classification")
        if task not in TASKS:
            raise UserError(f"task={task!r}: use {', '.join(TASKS)}")
        schema = TASKS[task]
    cfg = load_config(config, extra, schema=schema)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return None
    return cfg


def run_train(args: argparse.Namespace, extra: list[str]) -> int:
    cfg = config_from_args(args, extra)
    if cfg is None:
        return 0
    if isinstance(cfg, SegmentationConfig):
        metrics = train_segmentation(cfg)
        if "checkpoint" in metrics:
            print(f"mIoU {metrics['mIoU']:.2f}%, aAcc {metrics['aAcc']:.2f}% ({cfg.run.out}/metrics.json)")
        return 0
    if isinstance(cfg, DetectionConfig):
        metrics = train_detection(cfg)
        if "checkpoint" in metrics:
            print(f"box AP {metrics['bbox_AP']:.2f}, mask AP {metrics['segm_AP']:.2f} ({cfg.run.out}/metrics.json)")
        return 0
    metrics = train(cfg)
    if "checkpoint" in metrics:
        print(f"top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}% ({cfg.run.out}/metrics.json)")
    return 0


def run_evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    overrides = {".".join(keys): value for keys, value in map(parse_override, extra)}
    path = Path(args.checkpoint)
    state = load_run_state(path)
    task = state["config"].get("task", "classification")
    if task not in EVALUATORS:
        raise UserError(f"{path}: its config has task={task!r}, which difrep cannot evaluate")
    result = EVALUATORS[task](path, overrides, state=state)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0
