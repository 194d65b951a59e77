"""Timing and peak memory for the benchmark scripts, which run each case in a fresh process so that its
peak is its own (CPU: the process's peak resident memory; CUDA: peak allocated device memory)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def seconds_per_step(step: Callable[[], None], iterations: int, device: str) -> float:
    """The mean time of ``iterations`` calls of ``step`` after one warm-up call (CUDA: synchronised, and the
    peak memory counted from after the warm-up)."""
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations
