"""Mixed precision by name: one table for every command that runs a model."""

from __future__ import annotations

import contextlib

import torch

from ..errors import UserError

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(name: str, option: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None for fp32); ``option`` names the setting in errors."""
    if name not in PRECISIONS:
        raise UserError(f"{option}={name!r}: use {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device``, or nothing for fp32 (``dtype`` None)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
