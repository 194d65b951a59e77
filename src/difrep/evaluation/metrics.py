"""Top-k accuracy."""

from __future__ import annotations

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Percentage of rows whose label is among the k highest scores (k capped at the class count)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels.to(top.device)[:, None]
    return {k: 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def count_classes(*labels: torch.Tensor) -> int:
    """Classes of integer labels 0..C-1 seen in any of the given splits (for heads and probes on caches)."""
    return int(max(int(y.max()) for y in labels)) + 1
