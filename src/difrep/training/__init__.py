"""Training heads on diffusion features: configs, the loop, evaluation of checkpoints."""

from .config import TrainConfig, config_from_dict, load_config
from .trainer import HEADS, Classifier, Experiment, build_head, evaluate_checkpoint, train

__all__ = ["HEADS", "Classifier", "Experiment", "TrainConfig", "build_head", "config_from_dict",
           "evaluate_checkpoint", "load_config", "train"]
