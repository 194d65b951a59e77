"""Probes on frozen, cached features.

- :func:`sgd_linear_probe`: the paper's linear probe. It trains the same :class:`~difrep.heads.LinearHead`
  that ``difrep train head.name=linear`` trains online, with the authors' protocol (SGD, lr 1e-2,
  momentum 0.9, 28 epochs, StepLR 7 x 0.1) on the raw features. Its numbers are the ones to compare
  with the paper's (64.9% for GD on ImageNet).
- :func:`lbfgs_logistic_probe`: L2-regularised multinomial logistic regression on standardised
  features, run to convergence with L-BFGS. Faster and deterministic, a good ranking tool for sweeps,
  but another estimator: do not report it as the paper's linear probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..data.subsets import held_out_split
from ..errors import UserError
from ..heads.simple import LinearHead
from .metrics import topk_accuracy


@dataclass
class ProbeResult:
    top1: float
    top5: float
    details: dict = field(default_factory=dict)


class Standardizer:
    """Per-dimension mean and std of the training features, applied to every split."""

    def __init__(self, x: torch.Tensor) -> None:
        self.mean = x.mean(dim=0)
        self.std = x.std(dim=0).clamp_min(1e-6)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _scores(model: nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


@dataclass
class LinearProbe:
    """A trained :class:`LinearHead` on cached features, with the standardisation it was trained with (if any)."""

    head: LinearHead
    norm: Standardizer | None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.head.fc.weight.device)
        return _scores(self.head, x if self.norm is None else self.norm(x))

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
        return topk_accuracy(self.scores(x), y)


def fit_sgd_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    epochs: int = 28,
    lr: float = 1e-2,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    step_epochs: int = 7,
    gamma: float = 0.1,
    optimizer: str = "sgd",
    standardize: bool = False,
    seed: int = 0,
) -> LinearProbe:
    """The authors' protocol on cached features [N, D] (pooled and flattened): a :class:`LinearHead`,
    cross-entropy, SGD, StepLR (7 epochs, x0.1), features as they are.

    ``optimizer`` "adam" gives the paper text's variant. ``standardize=True`` (not the paper's protocol)
    first maps every dimension to zero mean and unit variance with training statistics, which
    speeds up SGD on features of very different scales; the probe stays linear in the features.
    Runs on the features' device.
    """
    gen = torch.Generator().manual_seed(seed)
    norm = Standardizer(train_x) if standardize else None
    if norm is not None:
        train_x = norm(train_x)
    head = LinearHead(train_x.shape[1], num_classes, pool=1).to(train_x.device)
    with torch.no_grad():
        bound = 1 / train_x.shape[1] ** 0.5
        head.fc.weight.copy_(torch.empty_like(head.fc.weight, device="cpu").uniform_(-bound, bound, generator=gen))
        head.fc.bias.copy_(torch.empty_like(head.fc.bias, device="cpu").uniform_(-bound, bound, generator=gen))
    train_y = train_y.to(train_x.device)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise UserError(f"optimizer={optimizer!r}: use 'sgd' or 'adam'")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_epochs, gamma=gamma)
    for _ in range(epochs):
        for batch in torch.randperm(len(train_x), generator=gen).to(train_x.device).split(batch_size):
            loss = F.cross_entropy(head(train_x[batch]), train_y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return LinearProbe(head, norm)


def sgd_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    epochs: int = 28,
    lr: float = 1e-2,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    step_epochs: int = 7,
    gamma: float = 0.1,
    optimizer: str = "sgd",
    standardize: bool = False,
    seed: int = 0,
) -> ProbeResult:
    """:func:`fit_sgd_linear_probe` on the training features, then top-1/top-5 on the test features."""
    probe = fit_sgd_linear_probe(train_x, train_y, num_classes, epochs, lr, batch_size, momentum, weight_decay,
                                 step_epochs, gamma, optimizer, standardize, seed)
    acc = probe.accuracy(test_x, test_y)
    return ProbeResult(acc[1], acc[5], {"epochs": epochs, "lr": lr, "optimizer": optimizer, "standardize": standardize})


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int) -> nn.Linear:
    head = nn.Linear(x.shape[1], num_classes).to(x.device)
    y = y.to(x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


@dataclass
class LogisticProbe:
    """A fitted multinomial logistic regression on standardised features."""

    head: nn.Linear
    norm: Standardizer
    l2: float
    val_top1: dict[float, float]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return _scores(self.head, self.norm(x))

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
        return topk_accuracy(self.scores(x), y)


def fit_logistic_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    l2_grid: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    val_fraction: float = 0.1,
    max_iter: int = 300,
    seed: int = 0,
) -> LogisticProbe:
    """Full-batch L-BFGS logistic regression; the L2 strength is chosen on a seeded, class-balanced
    ``val_fraction`` of the training features, then refitted on all of them."""
    norm = Standardizer(train_x)
    x = norm(train_x)
    val_top1: dict[float, float] = {}
    if len(l2_grid) > 1:
        train_y = train_y.to(x.device)
        fit_mask, val_idx = held_out_split(train_y, val_fraction, seed)
        for l2 in l2_grid:
            head = _fit_logistic(x[fit_mask], train_y[fit_mask], num_classes, l2, max_iter)
            val_top1[l2] = topk_accuracy(_scores(head, x[val_idx]), train_y[val_idx])[1]
    best = max(l2_grid, key=lambda l2: (val_top1.get(l2, 0.0), l2))
    return LogisticProbe(_fit_logistic(x, train_y, num_classes, best, max_iter), norm, best, val_top1)


def lbfgs_logistic_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    l2_grid: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    val_fraction: float = 0.1,
    max_iter: int = 300,
    seed: int = 0,
) -> ProbeResult:
    """Fit :func:`fit_logistic_probe` on the training features; the test split is only evaluated."""
    probe = fit_logistic_probe(train_x, train_y, num_classes, l2_grid, val_fraction, max_iter, seed)
    acc = probe.accuracy(test_x, test_y)
    return ProbeResult(acc[1], acc[5], {"l2": probe.l2, "val_top1": probe.val_top1})
