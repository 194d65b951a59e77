"""Evaluation protocols on frozen features: linear probes, kNN, CKA, sweeps."""

from .cka import MinibatchCKA, cka_matrix, linear_cka
from .knn import knn_accuracy, knn_classify
from .linear import LogisticProbe, ProbeResult, fit_logistic_probe, lbfgs_logistic_probe, sgd_linear_probe
from .metrics import topk_accuracy

__all__ = [
    "LogisticProbe",
    "MinibatchCKA",
    "ProbeResult",
    "cka_matrix",
    "fit_logistic_probe",
    "knn_accuracy",
    "knn_classify",
    "lbfgs_logistic_probe",
    "linear_cka",
    "sgd_linear_probe",
    "topk_accuracy",
]
