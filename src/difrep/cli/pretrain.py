"""``difrep pretrain [CONFIG] [section.option=value ...]``: train an unconditional ADM U-Net as a DDPM."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..pretraining import PretrainConfig, pretrain
from ..training import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="train a diffusion model (unconditional DDPM, resumes from run.out/last.pt)",
                       description="Train an ADM U-Net of any configuration (model.flags) as an unconditional DDPM "
                       "on a data set difrep reads; labels are not used. CONFIG is a YAML file (see "
                       "configs/pretrain_fashion_mnist.yaml); options can be overridden as section.option=value. "
                       "Under torchrun, training is data-parallel.")
    p.add_argument("config", nargs="?", help="YAML config (defaults apply to what it leaves out)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    config = args.config
    if config is not None and "=" in config and not Path(config).exists():
        config, extra = None, [config, *extra]
    cfg = load_config(config, extra, schema=PretrainConfig)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    summary = pretrain(cfg)
    if summary:
        print(f"EMA weights: {summary['weights']} ({summary['parameters'] / 1e6:.2f}M parameters)")
    return 0
