"""One study runner: a study is a YAML file of stages (``configs/studies/``), ``difrep study FILE``."""

from .findings import Finding, Judge
from .runner import Study, run_study
from .spec import StudySpec, load_study
from .stages import KINDS, choose_settings

__all__ = ["KINDS", "Finding", "Judge", "Study", "StudySpec", "choose_settings", "load_study", "run_study"]
