"""Weighted k-nearest-neighbour classification on cosine similarity (the paper's Table 9 protocol)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .metrics import topk_accuracy


def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    chunk_size: int = 256,
) -> dict[int, torch.Tensor]:
    """Class scores [N_test, num_classes] for each k: the k most cosine-similar training features
    vote for their class with weight exp(similarity / temperature). Test features are processed in
    chunks of ``chunk_size``, so memory grows with chunk_size x N_train, not N_test x N_train. Scores
    live on the training features' device."""
    train = F.normalize(train_x.float(), dim=1)
    train_y = train_y.to(train.device)
    kmax = min(max(ks), len(train))
    scores = {k: torch.zeros(len(test_x), num_classes, device=train.device) for k in ks}
    for start in range(0, len(test_x), chunk_size):
        query = F.normalize(test_x[start : start + chunk_size].to(train.device).float(), dim=1)
        sim, idx = (query @ train.T).topk(kmax, dim=1)
        weights = (sim / temperature).exp()
        votes = train_y[idx]
        for k in ks:
            kk = min(k, kmax)
            scores[k][start : start + len(query)].scatter_add_(1, votes[:, :kk], weights[:, :kk])
    return scores


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
) -> dict[int, dict[int, float]]:
    """{k: {1: top-1 %, 5: top-5 %}} for each k."""
    scores = knn_classify(train_x, train_y, test_x, num_classes, ks, temperature)
    return {k: topk_accuracy(s, test_y) for k, s in scores.items()}
