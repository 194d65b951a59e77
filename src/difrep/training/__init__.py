"""Training heads on diffusion features: configs, the classification task, evaluation of checkpoints; the
reference classifier of sample checks."""

from .config import TrainConfig, config_from_dict, load_config
from .reference import ReferenceClassifierTask, train_reference_classifier
from .trainer import HEADS, ClassificationTask, Classifier, build_head, evaluate_checkpoint, train

__all__ = ["HEADS", "ClassificationTask", "Classifier", "ReferenceClassifierTask", "TrainConfig", "build_head",
           "config_from_dict", "evaluate_checkpoint", "load_config", "train", "train_reference_classifier"]
