"""Class-balanced label subsets (ImageNet 1%/10% style) for any labelled data set."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, Subset

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


def held_out_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, class-balanced ``fraction`` of a training split held out for choosing settings:
    ``(fit_mask, held_out_indices)``, on the labels' device. Every protocol that picks a setting (probe
    strength, sweep cell, head settings) uses this one split, never the test split."""
    held_out = torch.tensor(balanced_subset(labels.tolist(), fraction=fraction, seed=seed), device=labels.device)
    fit = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    fit[held_out] = False
    return fit, held_out


def targets_of(dataset: Dataset) -> list[int]:
    """The class labels of a data set (or a ``Subset`` of one) without reading its images."""
    if isinstance(dataset, Subset):
        base = targets_of(dataset.dataset)
        return [base[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise UserError(f"{type(dataset).__name__} has no class labels (targets)")
    return [int(t) for t in targets]


def balanced_order(rows: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``rows`` reordered so that every prefix is as class-balanced as the classes allow: the first of each
    class (in a seeded random order within the class), then the second of each, and so on."""
    gen = torch.Generator().manual_seed(seed)
    rank = torch.empty(len(rows), dtype=torch.long)
    labels = labels[rows].cpu()
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        rank[members[torch.randperm(len(members), generator=gen)]] = torch.arange(len(members))
    order = sorted(range(len(rows)), key=lambda i: (int(rank[i]), int(labels[i])))
    return rows[torch.tensor(order, dtype=torch.long)]


def first_of_classes(dataset: Dataset, classes: int) -> list[int]:
    """The position of the first image of each of the first ``classes`` classes met, ascending: a few images
    that differ in kind, e.g. to draw feature pictures of."""
    picked: dict[int, int] = {}
    for index, label in enumerate(targets_of(dataset)):
        picked.setdefault(label, index)
        if len(picked) == classes:
            break
    return sorted(picked.values())
