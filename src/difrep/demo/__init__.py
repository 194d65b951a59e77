"""The demo study: the paper's findings reproduced at small scale with difrep's shipped model."""

from .heads import HeadProtocol, HeadResult
from .pipeline import DemoConfig, choose_settings, pixel_probe, run_demo
from .report import findings, write_report

__all__ = ["DemoConfig", "HeadProtocol", "HeadResult", "choose_settings", "findings", "pixel_probe", "run_demo",
           "write_report"]
