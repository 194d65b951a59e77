"""FeatureExtractor: features f(x0, t, b) for many noise steps t and blocks b in one batched pass."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models import Backbone
from .memory import (
    CPU_MAX_CHUNK,
    PROBE_INPUTS,
    ActivationCost,
    chunk_for_budget,
    default_budget,
    measure_peak,
)
from .noise import noise_for_batch

log = logging.getLogger("difrep.features")


class FeatureExtractor(nn.Module):
    """Noise images to every requested step t and return the activations after every block b.

    All timesteps (and noise draws) of a batch are folded into one forward, split in chunks of
    ``chunk_size`` images x steps to bound memory, and the U-Net stops at the deepest block.
    ``chunk_size="auto"`` measures the memory a forward takes per input (once per input shape, device,
    dtype and grad mode) and then runs the largest chunks that fit ``memory_budget`` bytes (default: 80%
    of the device's free memory when measured; on a CPU at most ``CPU_MAX_CHUNK``); see
    :mod:`difrep.features.memory`. Any :class:`difrep.models.Backbone` serves: images go through its ``encode`` (VAE latents for Stable
    Diffusion, mean/std for timm) and noise is added to that. A backbone without a noise step (timm)
    is run once per image, without noise, and its features are returned under every requested t.

    noise: "fixed" draws a deterministic noise per image index (evaluation; the call must pass the
    images' data-set indices), "fresh" draws new noise at every call (training). ``num_noise_draws``
    > 1 averages features over that many draws.
    pool: adaptive average pooling of every feature map to pool x pool, or None for full maps.
    dtype: run the backbone under autocast in this dtype (torch.bfloat16 / torch.float16).
    channels_last: convert the backbone's weights and each x_t to the channels-last memory format.
    compile: run the backbone's ``forward_intermediates`` through ``torch.compile`` (True: the default
    backend; a string names one). Both are opt-in: ``benchmarks/extract.py`` measures when they pay.
    """

    def __init__(
        self,
        model: nn.Module,
        timesteps: Sequence[int],
        blocks: Sequence[int],
        pool: int | tuple[int, int] | None = None,
        noise: Literal["fixed", "fresh"] = "fixed",
        num_noise_draws: int = 1,
        seed: int = 0,
        chunk_size: int | Literal["auto"] = "auto",
        dtype: torch.dtype | None = None,
        requires_grad: bool = False,
        memory_budget: int | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        self.model = model
        if not isinstance(model, Backbone):
            raise UserError(f"FeatureExtractor needs a difrep backbone (difrep.create_model), got {type(model).__name__}")
        if not timesteps or not blocks:
            raise UserError("FeatureExtractor needs at least one timestep and one block")
        self.timesteps = model.validate_timesteps(timesteps)
        self.blocks = model.validate_blocks(list(blocks))
        if noise not in ("fixed", "fresh"):
            raise UserError(f"noise={noise!r}: use 'fixed' (evaluation) or 'fresh' (training)")
        if num_noise_draws < 1:
            raise UserError(f"num_noise_draws={num_noise_draws}: must be at least 1")
        if chunk_size != "auto" and not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise UserError(f"chunk_size={chunk_size!r}: give a number of inputs >= 1, or 'auto'")
        if memory_budget is not None and memory_budget <= 0:
            raise UserError(f"memory_budget={memory_budget}: give a number of bytes > 0")
        self.pool = pool
        self.noise = noise
        self.num_noise_draws = num_noise_draws
        self.seed = seed
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.dtype = dtype
        self.requires_grad = requires_grad
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self._compiled = (
            (torch.compile(model.forward_intermediates, backend=compile if isinstance(compile, str) else "inductor"),)
            if compile else ()
        )
        #: chunk_size="auto": the measured cost and the chunk chosen, per (input shape, device, dtype, grad)
        self.activation_costs: dict[tuple, ActivationCost] = {}
        self.auto_chunks: dict[tuple, int] = {}
        self.eval()

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.model.image_size
        if images.ndim != 4 or images.shape[-2:] != (size, size):
            raise UserError(
                f"images must be [N, C, {size}, {size}] for this model, got {tuple(images.shape)}"
            )

    def _noise(self, images: torch.Tensor, indices: Sequence[int] | None, noise: torch.Tensor | None) -> torch.Tensor:
        """Noise for x0 = ``images`` in the backbone's input space, [N, draws, *x0 shape]."""
        n, k = images.shape[0], self.num_noise_draws
        if noise is not None:
            noise = noise if noise.ndim == images.ndim + 1 else noise[:, None]
            if noise.shape != (n, k, *images.shape[1:]):
                raise UserError(f"noise must be [{n}, {k}, {', '.join(map(str, images.shape[1:]))}] "
                                f"(images x draws), got {tuple(noise.shape)}")
            return noise.to(images)
        if self.noise == "fresh":
            return torch.randn(n, k, *images.shape[1:], device=images.device, dtype=images.dtype)
        return noise_for_batch(images, indices, self.seed, k,
                               "noise='fixed' draws each image's noise from its position in the data set: call "
                               "extractor(images, indices=...) with those positions (or build the extractor with "
                               "noise='fresh')")

    def forward(
        self,
        images: torch.Tensor,
        indices: Sequence[int] | None = None,
        y: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[tuple[int, int], torch.Tensor]:
        """Features for every (t, b) as float32 tensors [N, C, H, W] (H = W = pool if pooling).

        ``images`` are in [-1, 1], at the backbone's ``image_size``. ``indices`` are the images' positions
        in their data set; they seed the fixed noise and are required for it. ``noise`` ([N, draws,
        *model.input_shape], or without the draws axis for one draw) overrides the extractor's own
        noise: a trainer passes the draws it controls.
        """
        self._check_images(images)
        amp = (
            torch.autocast(images.device.type, dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        with amp:
            x0 = self.model.encode(images)
        noisy = self.model.takes_timestep
        n = images.shape[0]
        steps, draws = (len(self.timesteps), self.num_noise_draws) if noisy else (1, 1)
        if noisy:
            noise = self._noise(x0, indices, noise)
            eps = noise[:, None].expand(n, steps, draws, *x0.shape[1:]).flatten(0, 2)
        x0 = x0[:, None, None].expand(n, steps, draws, *x0.shape[1:]).flatten(0, 2)
        t = torch.tensor(self.timesteps[:steps], device=images.device)[None, :, None].expand(n, steps, draws).flatten()
        ylab = None if y is None else y[:, None, None].expand(n, steps, draws).flatten()

        grad = contextlib.nullcontext() if self.requires_grad else torch.no_grad()
        parts: dict[int, list[torch.Tensor]] = {b: [] for b in self.blocks}

        def run(sel: slice | list[int]) -> dict[int, torch.Tensor]:
            x_t = self.model.diffusion.q_sample(x0[sel], t[sel], eps[sel]) if noisy else x0[sel]
            if self.channels_last:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            kwargs = {} if ylab is None else {"y": ylab[sel]}
            forward = self._compiled[0] if self._compiled else self.model.forward_intermediates
            feats = forward(x_t, t[sel], indices=self.blocks, stop_early=True, **kwargs)
            return {b: (f if self.pool is None else F.adaptive_avg_pool2d(f, self.pool)).float()
                    for b, f in feats.items()}

        with grad, amp:
            chunk = self._chunk_size(run, x0)
            for start in range(0, x0.shape[0], chunk):
                for b, f in run(slice(start, start + chunk)).items():
                    parts[b].append(f)
        out: dict[tuple[int, int], torch.Tensor] = {}
        for b, chunks in parts.items():
            f = torch.cat(chunks).unflatten(0, (n, steps, draws)).mean(dim=2)
            for i, step in enumerate(self.timesteps):
                out[(step, b)] = f[:, i if noisy else 0]
        return out

    def _chunk_size(self, run: Callable[[list[int]], dict[int, torch.Tensor]], x0: torch.Tensor) -> int:
        """The fixed chunk size, or for ``chunk_size="auto"`` the one measured for this input shape, device,
        dtype and grad mode (at most CPU_MAX_CHUNK on a CPU). The measurement runs the first input alone
        (twice: the first warms up) and PROBE_INPUTS times over and discards those features, so the batch is
        chunked the same way whatever was measured first (a cache extracted in one go and a resumed one hold
        the same values)."""
        if self.chunk_size != "auto":
            return self.chunk_size
        key = (tuple(x0.shape[1:]), x0.device, self.dtype, torch.is_grad_enabled())
        if key not in self.auto_chunks:
            budget = self.memory_budget or default_budget(x0.device)
            if budget is None:
                log.warning("chunk_size='auto': the free memory of %s is unknown; each batch runs whole (pass "
                            "memory_budget to bound it)", x0.device)
                self.auto_chunks[key] = sys.maxsize
                return sys.maxsize
            run([0])  # one-time allocations (kernel libraries, workspaces) would otherwise count as per input
            peaks = [measure_peak(lambda sel=sel: run(sel), x0.device)[1] for sel in ([0], [0] * PROBE_INPUTS)]
            cost = ActivationCost.from_peaks(*peaks, n=PROBE_INPUTS)
            self.activation_costs[key] = cost
            chunk = chunk_for_budget(cost, budget, "chunk_size='auto'")
            self.auto_chunks[key] = min(chunk, CPU_MAX_CHUNK) if x0.device.type == "cpu" else chunk
            log.info("chunk_size='auto': %.1f MiB per input (+%.1f MiB), %d inputs per forward within %.2f GiB",
                     cost.per_input_bytes / 2**20, cost.fixed_bytes / 2**20, self.auto_chunks[key], budget / 2**30)
        return self.auto_chunks[key]
