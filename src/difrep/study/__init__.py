"""The paper's study at full Fashion-MNIST scale: ``difrep study configs/study_fashion_mnist.yaml``."""

from .config import StudyConfig
from .pipeline import STAGES, Study, run_study
from .report import findings, write_report

__all__ = ["STAGES", "Study", "StudyConfig", "findings", "run_study", "write_report"]
