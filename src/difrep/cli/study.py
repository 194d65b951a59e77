"""``difrep study [CONFIG] [section.option=value ...]``: the paper's study on all of Fashion-MNIST (docs/study.md)."""

from __future__ import annotations

import argparse

from ..study import StudyConfig, run_study
from .train import config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="the paper's protocols on all of Fashion-MNIST with the shipped model (resumes)",
                       description="Run the stages of run.stages (samples, sweep, knn, controls, heads, semi, cka) "
                       "into run.out and write report.md. CONFIG is a YAML file (configs/study_fashion_mnist.yaml); "
                       "options can be overridden as section.option=value. Rerun the same command to continue an "
                       "interrupted study: finished caches shards, probes and training runs are kept.")
    p.add_argument("config", nargs="?", help="YAML config (defaults apply to what it leaves out)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    cfg = config_from_args(args, extra, StudyConfig)
    if cfg is None:
        return 0
    run_study(cfg)
    print(f"report: {cfg.run.out}/report.md")
    return 0
