"""Class-balanced label subsets (ImageNet 1%/10% style) for any labelled data set."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from ..errors import UserError


def balanced_subset(
    labels: Sequence[int], fraction: float | None = None, per_class: int | None = None, seed: int = 0
) -> list[int]:
    """Indices of a seeded, class-balanced subset: ``per_class`` images of every class, or
    ``fraction`` of each class (rounded, at least one). The result is sorted and does not depend on
    anything but the labels, the size and the seed."""
    if (fraction is None) == (per_class is None):
        raise UserError("give exactly one of fraction and per_class")
    if fraction is not None and not 0 < fraction <= 1:
        raise UserError(f"fraction={fraction} must be in (0, 1]")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    gen = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        k = per_class if per_class is not None else max(1, round(fraction * len(members)))  # type: ignore[operator]
        if k > len(members):
            raise UserError(f"class {label} has {len(members)} images, fewer than per_class={k}")
        order = torch.randperm(len(members), generator=gen)[:k]
        chosen.extend(members[i] for i in order.tolist())
    return sorted(chosen)
