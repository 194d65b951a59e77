"""Training heads on diffusion features: configs, the classification task, evaluation of checkpoints."""

from .config import TrainConfig, config_from_dict, load_config
from .trainer import HEADS, ClassificationTask, Classifier, build_head, evaluate_checkpoint, train

__all__ = ["HEADS", "ClassificationTask", "Classifier", "TrainConfig", "build_head", "config_from_dict",
           "evaluate_checkpoint", "load_config", "train"]
