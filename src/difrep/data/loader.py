"""DataLoaders that keep an accelerator fed: worker processes, pinned memory, persistent workers."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..errors import UserError
from .images import collate_skipping


def default_workers() -> int:
    """One worker per CPU core the process may use, at most 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return min(16, cores)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool = False,
    workers: int | None = None,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool | None = None,
    batch_sampler: Iterable[list[int]] | None = None,
) -> DataLoader:
    """Shuffle and drop the last partial batch when training; under DDP each process gets its shard.

    ``batch_sampler`` (the indices of every batch, for a loader read once: a cache's shards, a period of
    pretraining steps) replaces all of that; the workers, pinning and prefetching stay.

    Training always shuffles with a :class:`DistributedSampler` (call ``loader.sampler.set_epoch``), one
    process being a world of one: w processes with batch B then see, step by step, the same global
    batches as one process with batch w x B. Evaluation under DDP uses an unpadded sharding, so every
    image is seen exactly once whatever the number of processes. Samples dropped as unreadable
    (``on_error='skip'``) leave their batch.
    """
    import torch.distributed as dist

    workers = default_workers() if workers is None else workers
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate_skipping,
                          pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers > 0 else None)
    sampler: torch.utils.data.Sampler | None = None
    if train:
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    elif distributed:
        sampler = ShardSampler(len(dataset))
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=train if drop_last is None else drop_last,
        collate_fn=collate_skipping,
        generator=gen,
    )


class ShardSampler(torch.utils.data.Sampler[int]):
    """Rank r of w takes indices r, r + w, r + 2w, ...: every index exactly once over all ranks."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None) -> None:
        import torch.distributed as dist

        self.size = size
        self.rank = dist.get_rank() if rank is None else rank
        self.world_size = dist.get_world_size() if world_size is None else world_size

    def __iter__(self):
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def mix_seeds(*values: int) -> int:
    """One seed from several integers (seed, step, position, ...), the same on every machine."""
    seed = 0
    for v in values:
        seed = (seed * 1_000_003 + v) % (2**63 - 1)
    return seed


class StepBatches(Sampler[list[int]]):
    """Batches of data-set indices for steps ``start, start + 1, ...``: each epoch is a permutation
    seeded by (seed, epoch); rank r of w takes its slice of every global batch."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                 world: int = 1) -> None:
        if size < batch_size * world:
            raise UserError(f"the data has {size} images, fewer than one global batch of {batch_size * world}")
        self.size, self.batch, self.seed, self.start, self.stop = size, batch_size, seed, start, stop
        self.rank, self.world = rank, world
        self.per_epoch = size // (batch_size * world)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start, self.stop):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(mix_seeds(self.seed, epoch)))
            first = (step % self.per_epoch) * self.batch * self.world + self.rank * self.batch
            yield order[first : first + self.batch].tolist()
