"""Timing for the benchmark scripts. Their peak memory is :func:`difrep.features.memory.measure_peak`'s, taken
around a whole case in a fresh process, so that it is the case's own."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def seconds_per_step(step: Callable[[], None], iterations: int, device: str) -> float:
    """The mean time of ``iterations`` calls of ``step`` after one warm-up call (CUDA: synchronised)."""
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations
