"""A sharded on-disk cache of frozen features f(x0, t, b), pooled, for fast probes and sweeps.

Layout of a cache folder::

    manifest.json                 what made it: model weights hash and config, data, transform, noise
    shard-00000.t150_b24_p2.npy   features [n, C*p*p] of one (t, b, pool) for the shard's images
    shard-00000.labels.npy        labels [n]
    shard-00000.indices.npy       data-set indices [n]
    shard-00000.done.json         written last: the size and SHA-256 of each file of the shard

Each file is written to a temporary name and renamed, and a shard counts only once its ``done``
record exists, so a killed extraction resumes at the first incomplete shard. Reading checks every
file's size against its record (a truncated file is reported, never read) and memory-maps the
arrays, so a cache larger than RAM is read at disk speed. Process r of w extracts shards r, r+w, ...
into the same folder; the shards merge by construction.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data.loader import build_loader, default_workers
from ..errors import MissingKeyError, UserError
from ..utils.files import atomic_write, file_sha256
from .extractor import FeatureExtractor

FORMAT_VERSION = 1


class CacheError(UserError):
    """A cache folder that is incomplete, damaged, or was made with other settings."""


@dataclass(frozen=True, order=True)
class FeatureKey:
    """One cached feature: noise step t, block b, adaptive pool size (0 = the full map)."""

    t: int
    b: int
    pool: int

    @property
    def name(self) -> str:
        return f"t{self.t}_b{self.b}_p{self.pool}"

    @classmethod
    def parse(cls, name: str) -> FeatureKey:
        try:
            t, b, p = (int(part[1:]) for part in name.split("_"))
        except ValueError:
            raise UserError(f"{name!r} is not a feature key like t150_b24_p2") from None
        return cls(t, b, p)


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True)))


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def _describe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _describe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: cache has {a!r}, asked for {b!r}")
    return out


class CacheWriter:
    """Extracts features shard by shard into a cache folder, skipping shards already complete."""

    def __init__(
        self,
        out_dir: str | Path,
        model: nn.Module,
        timesteps: Sequence[int],
        blocks: Sequence[int],
        pools: Sequence[int],
        description: dict[str, Any],
        seed: int = 0,
        num_noise_draws: int = 1,
        shard_size: int = 4096,
        storage_dtype: str = "float16",
        chunk_size: int | str = "auto",
        dtype: torch.dtype | None = None,
        memory_budget: int | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
    ) -> None:
        if storage_dtype not in ("float16", "float32"):
            raise UserError(f"storage_dtype={storage_dtype!r}: use float16 or float32")
        if not pools or any(p < 0 for p in pools):
            raise UserError(f"pools={list(pools)}: give pool sizes >= 1, or 0 for full maps")
        self.out_dir = Path(out_dir)
        self.pools = sorted(set(pools))
        single = self.pools[0] if len(self.pools) == 1 and self.pools[0] > 0 else None
        self.extractor = extractor = FeatureExtractor(
            model, timesteps, blocks, pool=single, noise="fixed", num_noise_draws=num_noise_draws,
            seed=seed, chunk_size=chunk_size, dtype=dtype, memory_budget=memory_budget,
            channels_last=channels_last, compile=compile,
        )
        self.keys = sorted(FeatureKey(t, b, p) for t in extractor.timesteps for b in extractor.blocks for p in self.pools)
        self.shard_size = shard_size
        self.storage_dtype = storage_dtype
        self.manifest = {
            "format_version": FORMAT_VERSION,
            "noise": {"mode": "fixed", "seed": extractor.seed, "num_draws": extractor.num_noise_draws},
            "keys": [k.name for k in self.keys],
            "shard_size": shard_size,
            "storage_dtype": storage_dtype,
            **description,
        }

    def prepare(self, num_samples: int) -> None:
        """Create the folder and manifest, or check that an existing one was made with these settings."""
        manifest = {**self.manifest, "num_samples": num_samples}
        path = self.out_dir / "manifest.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise CacheError(f"{path}: damaged manifest ({err})") from err
            diffs = _describe_differences(old, manifest)
            if diffs:
                raise CacheError(
                    f"{self.out_dir} holds a cache made with other settings:\n  " + "\n  ".join(diffs)
                    + "\nChoose another output folder, or delete this one."
                )
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_json(path, manifest)

    def shard_complete(self, shard: int) -> bool:
        try:
            _check_shard(self.out_dir, shard)
        except CacheError:
            return False
        return True

    def run(
        self,
        dataset: Dataset,
        batch_size: int = 64,
        workers: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> list[int]:
        """Extract this process's missing shards; returns the shards it wrote.

        Three stages overlap so that the model never waits: loader workers decode and transform the next
        batches (pinned and copied asynchronously on CUDA), the model runs, and a writer thread moves the
        previous batches' features to the host, checks them and writes each shard as it completes.
        """
        n = len(dataset)  # type: ignore[arg-type]
        if rank == 0:
            self.prepare(n)
        elif not (self.out_dir / "manifest.json").exists():
            raise CacheError(f"{self.out_dir}: rank 0 has not written the manifest yet")
        device = torch.device(device)
        todo = [s for s in range(rank, math.ceil(n / self.shard_size), world_size) if not self.shard_complete(s)]
        batches, ends = [], []
        for shard in todo:
            rows = list(range(shard * self.shard_size, min(n, (shard + 1) * self.shard_size)))
            for start in range(0, len(rows), batch_size):
                batches.append(rows[start : start + batch_size])
                ends.append(shard if start + batch_size >= len(rows) else None)
        workers = default_workers() if workers is None else workers
        loader = build_loader(dataset, 0, workers=workers, batch_sampler=batches)
        bar = tqdm(total=sum(len(b) for b in batches), desc=f"extract {self.out_dir.name}", unit="img",
                   disable=not progress)
        with _ShardWriterThread(self._write_rows, max_pending=4) as writer:
            for rows, end, batch in zip(batches, ends, loader):
                if batch is not None:
                    images, labels, indices = batch
                    images = images.to(device, non_blocking=True)
                    writer.put(self._features(images, indices.tolist()), labels, indices)
                if end is not None:
                    writer.end_shard(end)
                bar.update(len(rows))
        bar.close()
        return todo

    def _features(self, images: torch.Tensor, indices: list[int]) -> dict[str, torch.Tensor]:
        """The batch's features in the storage dtype, still on the model's device."""
        feats = self.extractor(images, indices=indices)
        dtype = torch.float16 if self.storage_dtype == "float16" else torch.float32
        out = {}
        for key in self.keys:
            f = feats[(key.t, key.b)]
            if key.pool and self.extractor.pool is None:
                f = F.adaptive_avg_pool2d(f, key.pool)
            out[key.name] = f.flatten(1).to(dtype)
        return out

    def _write_rows(self, shard: int, feats: dict[str, list[np.ndarray]], labels: list[np.ndarray],
                    indices: list[np.ndarray]) -> None:
        if not labels:
            raise CacheError(f"{self.out_dir}: every image of shard {shard} was unreadable (skipped)")
        for name, arrays in feats.items():
            if not all(np.isfinite(a).all() for a in arrays):
                raise CacheError(f"feature {name} overflows {self.storage_dtype}: use storage_dtype float32")
        self._write_shard(shard, {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels),
                          np.concatenate(indices))

    def _write_shard(self, shard: int, feats: dict[str, np.ndarray], labels: np.ndarray, indices: np.ndarray) -> None:
        files = {}
        for name, array in [*feats.items(), ("labels", labels), ("indices", indices)]:
            path = self.out_dir / f"shard-{shard:05d}.{name}.npy"
            _save_npy(path, array)
            files[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path), "rows": len(array)}
        _write_json(self.out_dir / f"shard-{shard:05d}.done.json", {"files": files})


class _ShardWriterThread:
    """Moves batches of features to the host and writes each shard once complete, on a thread of its own.

    At most ``max_pending`` batches wait in its queue (the model blocks beyond that, bounding memory). An
    error in the thread (a write, an overflow, an interrupt) is raised in the caller at its next call.
    """

    def __init__(self, write: Callable[..., None], max_pending: int) -> None:
        self.write = write
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="difrep-cache-writer", daemon=True)

    def __enter__(self) -> _ShardWriterThread:
        self.thread.start()
        return self

    def put(self, feats: dict[str, torch.Tensor], labels: torch.Tensor, indices: torch.Tensor) -> None:
        host = {name: f.to("cpu", non_blocking=True) for name, f in feats.items()}
        ready = None
        if any(f.is_cuda for f in feats.values()):
            ready = torch.cuda.Event()
            ready.record()
        self._send(("rows", host, ready, labels, indices))

    def end_shard(self, shard: int) -> None:
        self._send(("end", shard))

    def _send(self, item: tuple) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _loop(self) -> None:
        feats: dict[str, list[np.ndarray]] = {}
        labels: list[np.ndarray] = []
        indices: list[np.ndarray] = []
        while True:
            item = self.queue.get()
            if item is None or self.error is not None:
                if item is None:
                    return
                continue
            try:
                if item[0] == "rows":
                    _, host, ready, batch_labels, batch_indices = item
                    if ready is not None:
                        ready.synchronize()
                    for name, f in host.items():
                        feats.setdefault(name, []).append(f.numpy())
                    labels.append(batch_labels.numpy().astype(np.int64))
                    indices.append(batch_indices.numpy().astype(np.int64))
                else:
                    self.write(item[1], feats, labels, indices)
                    feats, labels, indices = {}, [], []
            except BaseException as err:  # noqa: BLE001 - handed to the caller, which raises it
                self.error = err

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        self.queue.put(None)
        self.thread.join()
        if exc is None and self.error is not None:
            raise self.error


def _check_shard(folder: Path, shard: int) -> dict:
    done = folder / f"shard-{shard:05d}.done.json"
    if not done.is_file():
        raise CacheError(f"{folder}: shard {shard} is incomplete (no {done.name}); run the extraction again to resume")
    try:
        record = json.loads(done.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CacheError(f"{done}: damaged record ({err})") from err
    for name, info in record.items():
        path = folder / name
        size = path.stat().st_size if path.is_file() else None
        if size != info["bytes"]:
            raise CacheError(f"{path}: {size} bytes on disk, {info['bytes']} written: truncated or replaced file")
    return record


class ShardedArray:
    """Rows of one array across all shards, memory-mapped; indexing returns a tensor (float32 for features)."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        floating = np.issubdtype(self.arrays[0].dtype, np.floating)
        self.dtype = np.float32 if floating else self.arrays[0].dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.arrays[0].shape[1:])

    def __getitem__(self, rows: Iterable[int] | torch.Tensor | slice) -> torch.Tensor:
        if isinstance(rows, slice):
            rows = range(*rows.indices(len(self)))
        rows = np.asarray(rows.tolist() if isinstance(rows, torch.Tensor) else list(rows), dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard_of):
            sel = shard_of == s
            out[sel] = self.arrays[s][rows[sel] - self.offsets[s]]
        return torch.from_numpy(out)

    def to_tensor(self, chunk: int = 65536) -> torch.Tensor:
        """All rows as one tensor (read in chunks)."""
        return torch.cat([self[slice(i, min(i + chunk, len(self)))] for i in range(0, len(self), chunk)])


class FeatureCache:
    """A complete cache folder, checked on opening; features are memory-mapped on first use."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / "manifest.json"
        if not path.is_file():
            raise CacheError(f"{self.folder}: not a feature cache (no manifest.json)")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CacheError(f"{path}: damaged manifest ({err})") from err
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{path}: cache format {self.manifest.get('format_version')}, expected {FORMAT_VERSION}")
        n, size = self.manifest["num_samples"], self.manifest["shard_size"]
        self.num_shards = math.ceil(n / size)
        missing = [s for s in range(self.num_shards) if not (self.folder / f"shard-{s:05d}.done.json").is_file()]
        if missing:
            raise CacheError(f"{self.folder}: {len(missing)} of {self.num_shards} shards are incomplete "
                             f"(first: {missing[0]}); run the extraction again to resume")
        self.records = [_check_shard(self.folder, s) for s in range(self.num_shards)]
        self.keys = [FeatureKey.parse(k) for k in self.manifest["keys"]]
        self._arrays: dict[str, ShardedArray] = {}

    def _load(self, name: str) -> ShardedArray:
        if name not in self._arrays:
            arrays = []
            for s in range(self.num_shards):
                path = self.folder / f"shard-{s:05d}.{name}.npy"
                try:
                    arrays.append(np.load(path, mmap_mode="r"))
                except (ValueError, OSError) as err:
                    raise CacheError(f"{path}: cannot be read ({err})") from err
            self._arrays[name] = ShardedArray(arrays)
        return self._arrays[name]

    def features(self, key: FeatureKey | str) -> ShardedArray:
        key = FeatureKey.parse(key) if isinstance(key, str) else key
        if key not in self.keys:
            raise MissingKeyError(f"{key.name} is not in the cache at {self.folder}: it holds {', '.join(k.name for k in self.keys)}")
        return self._load(key.name)

    @property
    def labels(self) -> torch.Tensor:
        return self._load("labels").to_tensor()

    @property
    def indices(self) -> torch.Tensor:
        return self._load("indices").to_tensor()

    def verify(self) -> None:
        """Recompute every file's SHA-256 against its record (reads the whole cache)."""
        for record in self.records:
            for name, info in record.items():
                if file_sha256(self.folder / name) != info["sha256"]:
                    raise CacheError(f"{self.folder / name}: content differs from the recorded SHA-256")


class CachedFeatures(torch.utils.data.Dataset):
    """A cache's samples as a data set yields images: ``({(t, b): feature [C, p, p]}, label, index)``, so that
    heads train from cached features with the same loaders and engine as from images."""

    def __init__(self, cache: FeatureCache, keys: Sequence[FeatureKey], channels: dict[int, int]) -> None:
        self.cache, self.keys = cache, list(keys)
        self.arrays = [cache.features(k) for k in self.keys]
        for key, array in zip(self.keys, self.arrays):
            if array.shape[1] != channels[key.b] * key.pool**2:
                raise CacheError(f"{cache.folder}: {key.name} has {array.shape[1]} values an image, not "
                                 f"{channels[key.b]} channels x {key.pool} x {key.pool}")
        self.channels = channels
        self.labels, self.indices = cache.labels, cache.indices

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[tuple[int, int], torch.Tensor], int, int]:
        feats = {(k.t, k.b): a[[i]][0].view(self.channels[k.b], k.pool, k.pool) for k, a in zip(self.keys, self.arrays)}
        return feats, int(self.labels[i]), int(self.indices[i])
