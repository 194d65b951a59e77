"""Linear centred kernel alignment (Kornblith et al., 2019), exact and as an unbiased minibatch estimate.

Exact CKA is computed in whichever space is smaller: from the D x D covariances when the features
have at most as many dimensions as there are inputs, otherwise from the N x N Gram matrices (the
same value, since <X^T Y, X^T Y> = <X X^T, Y Y^T>). Full U-Net maps (D = 262,144 at b = 24) thus cost
O(N^2 + N D) memory, never D^2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import UserError


def _centred(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1).double()
    return x - x.mean(0)


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    """X_c X_c^T of the centred features: [N, N]."""
    xc = _centred(x)
    return xc @ xc.T


def _cka_from_grams(k: torch.Tensor, l: torch.Tensor) -> float:
    return ((k * l).sum() / (k.norm() * l.norm())).item()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA of two representations [N, ...] of the same N inputs; memory O(N^2 + N D)."""
    if len(x) != len(y):
        raise UserError(f"CKA compares the same inputs: got {len(x)} and {len(y)} rows")
    n, dx, dy = len(x), x[0].numel(), y[0].numel()
    if max(dx, dy) > n:
        return _cka_from_grams(_centred_gram(x), _centred_gram(y))
    xc, yc = _centred(x), _centred(y)
    return ((yc.T @ xc).pow(2).sum() / ((xc.T @ xc).norm() * (yc.T @ yc).norm())).item()


def _unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012)'s unbiased HSIC estimator on Gram matrices with zeroed diagonals."""
    n = k.shape[0]
    k = k - torch.diag(torch.diag(k))
    l = l - torch.diag(torch.diag(l))
    ones = torch.ones(n, dtype=k.dtype, device=k.device)
    term = (k * l).sum() + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (ones @ k @ l @ ones)
    return term / (n * (n - 3))


class MinibatchCKA:
    """Accumulates the unbiased minibatch CKA of Nguyen et al. (2021) for many pairs at once.

    Call :meth:`update` with the features of one minibatch (same inputs for every representation);
    :meth:`compute` returns the [len(xs), len(ys)] matrix, on the features' device. Memory does not
    grow with the data size.
    """

    def __init__(self, num_x: int, num_y: int) -> None:
        self.num_x, self.num_y = num_x, num_y
        self.xy: torch.Tensor | None = None
        self.xx: torch.Tensor | None = None
        self.yy: torch.Tensor | None = None

    def update(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        if len(xs[0]) < 4:
            raise UserError("the unbiased HSIC estimator needs minibatches of at least 4 inputs")
        device = xs[0].device
        if self.xy is None:
            self.xy = torch.zeros(self.num_x, self.num_y, dtype=torch.float64, device=device)
            self.xx = torch.zeros(self.num_x, dtype=torch.float64, device=device)
            self.yy = torch.zeros(self.num_y, dtype=torch.float64, device=device)
        assert self.xx is not None and self.yy is not None
        grams_y = [(y.double().flatten(1) @ y.double().flatten(1).T) for y in ys]
        for i, x in enumerate(xs):
            kx = x.double().flatten(1) @ x.double().flatten(1).T
            self.xx[i] += _unbiased_hsic(kx, kx)
            for j, ky in enumerate(grams_y):
                self.xy[i, j] += _unbiased_hsic(kx, ky)
        for j, ky in enumerate(grams_y):
            self.yy[j] += _unbiased_hsic(ky, ky)

    def compute(self) -> torch.Tensor:
        if self.xy is None or self.xx is None or self.yy is None:
            raise UserError("MinibatchCKA.compute() before any update()")
        return self.xy / (self.xx[:, None].sqrt() * self.yy[None, :].sqrt())


def cka_matrix(
    xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], batch_size: int | None = None, seed: int = 0
) -> torch.Tensor:
    """CKA between every x in ``xs`` and every y in ``ys`` (all [N, ...] over the same N inputs), on the CPU.

    ``batch_size`` None computes exact linear CKA, each Gram matrix once (len(ys) + 1 of N x N held at a
    time when the features are wider than N); otherwise the unbiased minibatch estimate over a seeded
    shuffle (the last incomplete batch is dropped)."""
    if batch_size is None:
        n = len(xs[0])
        if max(t[0].numel() for t in [*xs, *ys]) <= n:
            return torch.tensor([[linear_cka(x, y) for y in ys] for x in xs], dtype=torch.float64)
        grams_y = [_centred_gram(y) for y in ys]
        rows = []
        for x in xs:
            kx = _centred_gram(x)
            rows.append([_cka_from_grams(kx, ky) for ky in grams_y])
        return torch.tensor(rows, dtype=torch.float64)
    n = len(xs[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    acc = MinibatchCKA(len(xs), len(ys))
    for start in range(0, n - batch_size + 1, batch_size):
        idx = order[start : start + batch_size].to(xs[0].device)
        acc.update([x[idx] for x in xs], [y[idx] for y in ys])
    return acc.compute().cpu()
