"""Linear centred kernel alignment (Kornblith et al., 2019), exact and as an unbiased minibatch estimate."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA of two representations [N, D1], [N, D2] of the same N inputs, in feature space (O(N D^2))."""
    if len(x) != len(y):
        raise ValueError(f"CKA compares the same inputs: got {len(x)} and {len(y)} rows")
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).pow(2).sum()
    return (cross / ((x.T @ x).norm() * (y.T @ y).norm())).item()


def _unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012)'s unbiased HSIC estimator on Gram matrices with zeroed diagonals."""
    n = k.shape[0]
    k = k - torch.diag(torch.diag(k))
    l = l - torch.diag(torch.diag(l))
    ones = torch.ones(n, dtype=k.dtype)
    term = (k * l).sum() + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (ones @ k @ l @ ones)
    return term / (n * (n - 3))


class MinibatchCKA:
    """Accumulates the unbiased minibatch CKA of Nguyen et al. (2021) for many pairs at once.

    Call :meth:`update` with the features of one minibatch (same inputs for every representation);
    :meth:`compute` returns the [len(xs), len(ys)] matrix. Memory does not grow with the data size.
    """

    def __init__(self, num_x: int, num_y: int) -> None:
        self.xy = torch.zeros(num_x, num_y, dtype=torch.float64)
        self.xx = torch.zeros(num_x, dtype=torch.float64)
        self.yy = torch.zeros(num_y, dtype=torch.float64)

    def update(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        if len(xs[0]) < 4:
            raise ValueError("the unbiased HSIC estimator needs minibatches of at least 4 inputs")
        grams_x = [(x.double().flatten(1) @ x.double().flatten(1).T) for x in xs]
        grams_y = [(y.double().flatten(1) @ y.double().flatten(1).T) for y in ys]
        for i, kx in enumerate(grams_x):
            self.xx[i] += _unbiased_hsic(kx, kx)
            for j, ky in enumerate(grams_y):
                self.xy[i, j] += _unbiased_hsic(kx, ky)
        for j, ky in enumerate(grams_y):
            self.yy[j] += _unbiased_hsic(ky, ky)

    def compute(self) -> torch.Tensor:
        return self.xy / (self.xx[:, None].sqrt() * self.yy[None, :].sqrt())


def cka_matrix(
    xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], batch_size: int | None = None, seed: int = 0
) -> torch.Tensor:
    """CKA between every x in ``xs`` and every y in ``ys`` (all [N, ...] over the same N inputs).

    ``batch_size`` None computes exact linear CKA; otherwise the unbiased minibatch estimate over a
    seeded shuffle (the last incomplete batch is dropped)."""
    if batch_size is None:
        return torch.tensor([[linear_cka(x.flatten(1), y.flatten(1)) for y in ys] for x in xs])
    n = len(xs[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    acc = MinibatchCKA(len(xs), len(ys))
    for start in range(0, n - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        acc.update([x[idx] for x in xs], [y[idx] for y in ys])
    return acc.compute()
