"""build: the real ADM-256 architecture (random weights), built directly on the device where it can be."""

from __future__ import annotations

import math
import time
from typing import Any

from .common import TINY_ADM, Setup


def randomize_zero_init(model: Any, seed: int = 0) -> int:
    """Give ADM's zero-initialised weights (the last layer of every residual branch) random values, so that every
    branch takes part in the precision checks; the other weights keep their initialisation, and with it the
    activation scale the tolerances were set for (``tests/reference.randomize_`` redraws every weight)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    count = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen).to(p) / math.sqrt(fan_in))
                count += 1
    return count


def check_build(setup: Setup) -> dict[str, Any]:
    import torch

    from difrep import create_model

    name, flags = ("adm", TINY_ADM) if setup.small else ("adm-256-uncond", {})
    torch.manual_seed(0)
    start = time.perf_counter()
    how = "on device"
    try:
        with torch.device(setup.dev):
            model = create_model(name, **flags)
    except Exception as err:  # noqa: BLE001 - reported in the row, then the slow path
        how = f"on CPU, then .to() (device build failed: {type(err).__name__}: {err})"
        model = create_model(name, **flags)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type != setup.dev.type]
    model = model.to(setup.dev)
    setup.sync()
    seconds = time.perf_counter() - start
    randomize_zero_init(model)
    setup.model = model
    params = sum(p.numel() for p in model.parameters())
    info = {i.index: i for i in model.feature_info}
    if not setup.small:
        if abs(params / 1e6 - 552.8) > 0.1:
            raise AssertionError(f"{params / 1e6:.1f}M parameters, expected 552.8M")
        if len(info) != 37 or (info[24].num_chs, info[24].resolution) != (1024, 16):
            raise AssertionError(f"{len(info)} blocks, b=24 {info[24].num_chs} ch at {info[24].resolution}: "
                                 "expected 37 blocks, b=24 1024 ch at 16")
    note = f"{params / 1e6:.1f}M params, {len(info)} blocks, built {how} in {seconds:.1f} s"
    if left:
        note += f"; {len(left)} tensors were left on the CPU by the device build (e.g. {left[0]})"
    return {"note": note}
