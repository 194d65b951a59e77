"""How many inputs (images x noise steps) one forward may take within a memory budget: ``chunk_size="auto"``.

The cost of a forward is measured, not modelled: the peak memory it allocates above what was in use before,
at two chunk sizes, gives a fixed part and a cost per input. On CUDA the caching allocator's counters measure
it (kernel workspaces included). On Linux CPUs the process's resident high-water mark does, after the C
allocator has handed its free pages back, so oneDNN's reorder buffers count too. Elsewhere (MPS, other
systems) a dispatch mode follows every tensor storage the forward creates until it is freed (autograd's saved
tensors included, buffers inside kernels not).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

log = logging.getLogger("difrep.features")

T = TypeVar("T")

#: the share of the free memory that ``chunk_size="auto"`` plans to use when no budget is given
DEFAULT_MEMORY_FRACTION = 0.8
#: inputs in the second of the two forwards that measure a cost per input: with two, the difference of two
#: resident-memory peaks of a small model is lost in the page reuse of the C heap (1 byte was measured)
PROBE_INPUTS = 4
#: the most inputs ``chunk_size="auto"`` puts in one forward on a CPU: beyond this, memory is plentiful but
#: the activations leave the caches (28-pixel model, every block, 2-core CPU: 117 images/s in chunks of 16,
#: 135 in chunks of 64, 98 of 256, 85 in one of 512; ``python benchmarks/extract.py --sections chunks``)
CPU_MAX_CHUNK = 64


class LiveStorageMeter(TorchDispatchMode):
    """The bytes of tensor storages created inside the mode and still alive, and their peak.

    Storages that existed before (weights, inputs) are never counted, views share their base's storage,
    and a storage counts until it is really freed (a weak reference to it expires), which also covers
    tensors autograd keeps for the backward pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, tuple[StorageWeakRef, int]] = {}

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self._tracked.items() if ref.expired()]:
            self.live -= self._tracked.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self._sweep()
        inputs = {StorageWeakRef(t.untyped_storage()).cdata for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            ref = StorageWeakRef(t.untyped_storage())
            if ref.cdata in inputs or ref.cdata in self._tracked:
                continue
            nbytes = t.untyped_storage().nbytes()
            self._tracked[ref.cdata] = (ref, nbytes)
            self.live += nbytes
        self.peak = max(self.peak, self.live)
        return out


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()
#: how the CPU's peak is measured: "rss" (Linux with glibc) or "storages" (the dispatch-mode meter)
CPU_METHOD = "rss" if _LIBC is not None else "storages"


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _rss_peak(fn: Callable[[], T]) -> tuple[T, int]:
    """The resident high-water mark's rise during ``fn``, counted from a heap trimmed of free pages."""
    _LIBC.malloc_trim(0)
    base = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    result = fn()
    return result, max(_status_bytes("VmHWM") - base, 0)


def measure_peak(fn: Callable[[], T], device: torch.device | str, method: str | None = None) -> tuple[T, int]:
    """``fn()`` and the peak bytes it allocated beyond the memory in use when it started.

    method: "allocator" (CUDA), "rss" (Linux CPU) or "storages" (any device); None picks the device's.
    """
    device = torch.device(device)
    method = method or ("allocator" if device.type == "cuda" else CPU_METHOD if device.type == "cpu" else "storages")
    if method == "allocator":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - base
    if method == "rss":
        if _LIBC is None:
            raise RuntimeError("method='rss' needs Linux with glibc")
        return _rss_peak(fn)
    with LiveStorageMeter() as meter:
        result = fn()
    return result, meter.peak


@dataclass(frozen=True)
class ActivationCost:
    """Peak memory of a forward of n inputs: ``fixed_bytes + n * per_input_bytes``."""

    fixed_bytes: int
    per_input_bytes: int

    @classmethod
    def from_peaks(cls, one: int, many: int, n: int = 2) -> ActivationCost:
        """From the measured peaks of forwards of one input and of ``n`` inputs."""
        per_input = max((many - one) // (n - 1), 1)
        return cls(max(one - per_input, 0), per_input)

    def max_inputs(self, budget_bytes: int) -> int:
        """The largest n whose forward fits ``budget_bytes`` (0 when not even one does)."""
        return max((budget_bytes - self.fixed_bytes) // self.per_input_bytes, 0)


def available_bytes(device: torch.device | str) -> int | None:
    """Memory a forward can still take on ``device``, or None where it cannot be known (meta, XLA, ...).

    CUDA: free plus cached-but-unused memory; MPS: the recommended working set less what is allocated; CPU:
    the system's available memory, shared by the processes of this machine (torchrun's LOCAL_WORLD_SIZE).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()
    if device.type != "cpu":
        return None
    share = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024 // share
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // share
    except (ValueError, OSError, AttributeError):
        return None


def default_budget(device: torch.device | str) -> int | None:
    """DEFAULT_MEMORY_FRACTION of :func:`available_bytes`, or None where the free memory is unknown."""
    free = available_bytes(device)
    return None if free is None else int(DEFAULT_MEMORY_FRACTION * free)


def chunk_for_budget(cost: ActivationCost, budget_bytes: int, what: str) -> int:
    """The chunk ``cost`` allows in ``budget_bytes``, at least 1 (with a warning when even 1 does not fit)."""
    chunk = cost.max_inputs(budget_bytes)
    if chunk < 1:
        log.warning("%s: one input needs %.0f MiB, more than the memory budget of %.0f MiB; running one at a "
                    "time", what, (cost.fixed_bytes + cost.per_input_bytes) / 2**20, budget_bytes / 2**20)
    return max(chunk, 1)
