"""The demo study: the paper's findings reproduced at small scale with difrep's shipped model."""

from .heads import HeadProtocol, fit_head, top1
from .pipeline import DemoConfig, choose_settings, pixel_probe, run_demo
from .report import findings, write_report

__all__ = ["DemoConfig", "HeadProtocol", "choose_settings", "findings", "fit_head", "pixel_probe", "run_demo",
           "top1", "write_report"]
