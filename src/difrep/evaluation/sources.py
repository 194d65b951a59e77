"""Where a search reads its features: a feature cache already on disk, or a backbone run on demand.

Both answer ``features(rows, keys)`` for any rows of a split, so the grid and the automatic search score
settings the same way. :class:`ExtractingSource` runs the backbone only for the (image, t) it has not
run yet: one forward yields every block up to the deepest asked, and it keeps each block it may be asked
for later, so no block of an image is computed twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.loader import build_loader
from ..data.subsets import targets_of
from ..errors import UserError
from ..features.cache import FeatureCache, FeatureKey
from ..features.extractor import FeatureExtractor


class FeatureSource(Protocol):
    """A split's labels and, for any of its rows, the features of any (t, b, pool)."""

    labels: torch.Tensor
    forward_passes: int

    def features(self, rows: torch.Tensor, keys: Sequence[FeatureKey]) -> dict[FeatureKey, torch.Tensor]: ...

    def retain(self, keys: Iterable[FeatureKey]) -> None:
        """Only these keys will be asked for from now on."""


class CachedSource:
    """A complete :class:`~difrep.features.cache.FeatureCache`; it runs no forward pass."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache
        self.labels = cache.labels
        self.forward_passes = 0

    def features(self, rows: torch.Tensor, keys: Sequence[FeatureKey]) -> dict[FeatureKey, torch.Tensor]:
        return {k: self.cache.features(k)[rows].float() for k in keys}

    def retain(self, keys: Iterable[FeatureKey]) -> None:
        """Nothing to free: the cache stays on disk."""


class ExtractingSource:
    """Features of a data set's images, extracted when first asked and kept in memory.

    ``keep`` names the keys that may still be asked for (default: those asked); a forward at step t runs to
    the deepest kept block at t and stores every kept key at t, so an image never runs twice at one t. ``forward_passes`` counts (image, t) forwards, ``seconds`` the time
    spent in them (image loading included), ``passes_at_depth`` and ``seconds_at_depth`` both by the deepest
    block the forwards ran to. Noise is drawn per
    image index with ``seed``, as in a cache, so the features equal a cache's (float32 here, not float16).
    """

    def __init__(self, model: torch.nn.Module, dataset: Dataset, seed: int = 0, batch_size: int = 64,
                 chunk_size: int | str = "auto", workers: int | None = 0, device: torch.device | str = "cpu",
                 keep: Iterable[FeatureKey] | None = None) -> None:
        self.model, self.dataset, self.seed = model, dataset, seed
        self.batch_size, self.chunk_size, self.workers = batch_size, chunk_size, workers
        self.device = torch.device(device)
        self.labels = torch.tensor(targets_of(dataset))
        self.keep: set[FeatureKey] | None = None if keep is None else set(keep)
        self.store: dict[FeatureKey, dict[int, torch.Tensor]] = {}
        self.forward_passes = 0
        self.seconds = 0.0
        self.passes_at_depth: dict[int, int] = {}
        self.seconds_at_depth: dict[int, float] = {}
        self._ran: set[tuple[int, int]] = set()
        self._extractors: dict[tuple[int, tuple[int, ...]], FeatureExtractor] = {}

    def retain(self, keys: Iterable[FeatureKey]) -> None:
        """Keep only these keys from now on (the settings still in the running) and free the others."""
        self.keep = set(keys)
        for key in [k for k in self.store if k not in self.keep]:
            del self.store[key]

    def features(self, rows: torch.Tensor, keys: Sequence[FeatureKey]) -> dict[FeatureKey, torch.Tensor]:
        rows_list = [int(r) for r in rows]
        for t in sorted({k.t for k in keys}):
            asked = [k for k in keys if k.t == t]
            missing = [r for r in rows_list if any(r not in self.store.get(k, {}) for k in asked)]
            if missing:
                self._extract(t, asked, missing)
        return {k: torch.stack([self.store[k][r] for r in rows_list]) for k in keys}

    def _extract(self, t: int, asked: list[FeatureKey], rows: list[int]) -> None:
        kept = {k for k in (self.keep if self.keep is not None else asked) if k.t == t} | set(asked)
        depth = max(k.b for k in kept)
        repeated = [r for r in rows if (r, t) in self._ran]
        if repeated:
            raise RuntimeError(f"t={t}: image rows {repeated[:5]} would run a second forward (a key was dropped "
                               "and asked again)")
        blocks = tuple(sorted({k.b for k in kept}))
        extractor = self._extractors.get((t, blocks))
        if extractor is None:
            extractor = self._extractors[(t, blocks)] = FeatureExtractor(
                self.model, [t], list(blocks), pool=None, noise="fixed", seed=self.seed, chunk_size=self.chunk_size)
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        loader = build_loader(self.dataset, 0, workers=self.workers, batch_sampler=batches)
        start = time.perf_counter()
        for batch_rows, batch in zip(batches, loader):
            if batch is None or len(batch[0]) != len(batch_rows):
                raise UserError(f"t={t}: an image of rows {batch_rows[:3]}... could not be read; the search needs "
                                "every image (drop unreadable files first: difrep data check)")
            images, _, indices = batch
            feats = extractor(images.to(self.device), indices=indices.tolist())
            for key in kept:
                f = feats[(t, key.b)]
                f = (F.adaptive_avg_pool2d(f, key.pool) if key.pool else f).flatten(1).cpu()
                self.store.setdefault(key, {}).update(zip(batch_rows, f))
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.seconds_at_depth[depth] = self.seconds_at_depth.get(depth, 0.0) + seconds
        self.forward_passes += len(rows)
        self.passes_at_depth[depth] = self.passes_at_depth.get(depth, 0) + len(rows)
        self._ran.update((r, t) for r in rows)
