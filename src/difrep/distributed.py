"""Process-group set-up from torchrun's environment, shared by extraction and training."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device: NCCL on GPUs, gloo on CPUs, a single process without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return rank, world, device


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def sum_over_ranks(value: int, world: int, device: torch.device | str = "cpu") -> int:
    """The sum of one integer over every process (the value itself in a single process)."""
    if world == 1:
        return value
    total = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())


def close_distributed() -> None:
    """Tear the process group down before the interpreter exits: left to exit, gloo's threads may be destroyed
    while still joinable, which aborts the process (SIGABRT) after its work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
