"""``difrep pretrain [CONFIG] [section.option=value ...]``: train an unconditional ADM U-Net as a DDPM."""

from __future__ import annotations

import argparse

from ..pretraining import PretrainConfig, pretrain
from .train import config_from_args


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
    cfg = config_from_args(args, extra, PretrainConfig)
    if cfg is None:
        return 0
    summary = pretrain(cfg)
    if "weights" in summary:  # rank 0 exports; other ranks return their last log row
        print(f"EMA weights: {summary['weights']} ({summary['parameters'] / 1e6:.2f}M parameters)")
    return 0
