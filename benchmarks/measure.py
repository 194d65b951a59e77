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


def in_use_bytes(device: str) -> int:
    """Memory in use now (CUDA: allocated; CPU: resident set size)."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def reset_peak(device: str) -> None:
    """Start the peak count afresh (CPU: Linux resets the resident high-water mark on writing 5 to clear_refs)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_since_reset(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
