"""The stage kinds a study file may name, each a small module with one job."""

from .base import Result, Score, Stage
from .cka import CkaStage
from .probes import KnnStage, PixelsStage
from .samples import SamplesStage
from .scenes import ScenesStage
from .sweep import SweepStage, choose_settings
from .train import TrainStage

KINDS: dict[str, type[Stage]] = {s.kind: s for s in (SweepStage, KnnStage, PixelsStage, CkaStage, TrainStage,
                                                     SamplesStage, ScenesStage)}

__all__ = ["KINDS", "Result", "Score", "Stage", "choose_settings"]
