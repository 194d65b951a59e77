"""Evaluation protocols on frozen features: linear probes, kNN, CKA, sweeps and the (t, b, pool) search."""

from .cka import MinibatchCKA, cka_matrix, linear_cka
from .knn import knn_accuracy, knn_classify
from .linear import LogisticProbe, ProbeResult, fit_logistic_probe, lbfgs_logistic_probe, sgd_linear_probe
from .metrics import topk_accuracy
from .search import SearchResult, SearchSpace, search_settings
from .sources import CachedSource, ExtractingSource

__all__ = [
    "CachedSource",
    "ExtractingSource",
    "LogisticProbe",
    "MinibatchCKA",
    "ProbeResult",
    "SearchResult",
    "SearchSpace",
    "cka_matrix",
    "fit_logistic_probe",
    "knn_accuracy",
    "knn_classify",
    "lbfgs_logistic_probe",
    "linear_cka",
    "search_settings",
    "sgd_linear_probe",
    "topk_accuracy",
]
