"""extract: FeatureExtractor in fp32, bf16 and fp16 autocast against fp32, and chunk_size="auto" within a budget."""

from __future__ import annotations

from typing import Any

from .common import Check, Setup, timed

# relative error of autocast features against fp32 that still passes
TOLERANCE = {"bf16": 0.08, "fp16": 0.02}


def rel_err(a: Any, ref: Any) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()


def make_extract_check(case: str, dtype_name: str, reference: dict[str, Any]) -> Check:
    """``case`` "gd" (one (t, b)) or "fusion" (DifFormer's set); the fp32 row leaves its features in ``reference``
    for the bf16 and fp16 rows to compare with."""
    def check(setup: Setup) -> dict[str, Any]:
        import torch

        from difrep import FeatureExtractor

        model = setup.backbone()
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
        timesteps, blocks = ([setup.gd[0]], [setup.gd[1]]) if case == "gd" else setup.fusion
        n = setup.images
        gen = torch.Generator().manual_seed(1)
        x = (torch.rand(n, 3, model.image_size, model.image_size, generator=gen) * 2 - 1).to(setup.dev)
        indices = list(range(n))
        ext = FeatureExtractor(model, timesteps, blocks, dtype=dtype, chunk_size=n * len(timesteps))
        repeats = 3 if setup.cuda else 1
        if setup.cuda:
            ext(x, indices=indices)  # warm-up: cuDNN autotuning, allocator
        seconds, out = timed(setup, lambda: ext(x, indices=indices), repeats)
        expected = {(t, b) for t in timesteps for b in blocks}
        if set(out) != expected:
            raise AssertionError(f"keys {sorted(out)} != {sorted(expected)}")
        bad = [k for k, v in out.items() if not torch.isfinite(v).all()]
        if bad:
            raise AssertionError(f"non-finite features at (t, b) = {bad}")
        if any(v.dtype != torch.float32 or v.device.type != setup.dev.type for v in out.values()):
            raise AssertionError("features must come back as float32 on the input's device")
        result: dict[str, Any] = {"ips": n / seconds}
        if dtype is None:
            reference[case] = {k: v.detach().cpu() for k, v in out.items()}
            result["note"] = "reference for bf16/fp16"
        else:
            if case not in reference:
                raise RuntimeError("no fp32 reference (the fp32 row failed)")
            err, where = max((rel_err(v.cpu(), reference[case][k]), k) for k, v in out.items())
            result["note"] = f"rel err vs fp32 {err:.1e} (worst at t={where[0]}, b={where[1]})"
            if not err <= TOLERANCE[dtype_name]:
                raise AssertionError(f"rel err vs fp32 {err:.3g} > {TOLERANCE[dtype_name]} at (t, b) = {where}")
        return result

    return check


def check_auto_chunk(setup: Setup) -> dict[str, Any]:
    """chunk_size="auto" under a budget of a quarter of the free memory (at most 8 GiB): the chunk it picks
    from the measured cost per input, and the peak of a batch of two such chunks, which must stay within."""
    import torch

    from difrep import FeatureExtractor
    from difrep.features.memory import available_bytes, measure_peak

    model = setup.backbone()
    timesteps, blocks = setup.fusion
    budget = min(available_bytes(setup.dev) // 4, 8 * 2**30)
    ext = FeatureExtractor(model, timesteps, blocks, pool=1, memory_budget=budget)
    x = (torch.rand(1, 3, model.image_size, model.image_size) * 2 - 1).to(setup.dev)
    ext(x, indices=[0])
    cost, chunk = next(iter(ext.activation_costs.values())), next(iter(ext.auto_chunks.values()))
    images = min(-(-2 * chunk // len(timesteps)), 64)
    x = (torch.rand(images, 3, model.image_size, model.image_size) * 2 - 1).to(setup.dev)
    seconds, (out, peak) = timed(setup, lambda: measure_peak(lambda: ext(x, indices=list(range(images))), setup.dev), 1)
    if not all(torch.isfinite(v).all() for v in out.values()):
        raise AssertionError("non-finite features")
    if peak > budget:
        raise AssertionError(f"peak {peak / 2**20:.0f} MiB over the budget of {budget / 2**20:.0f} MiB")
    return {"ips": images / seconds, "note": f"{cost.per_input_bytes / 2**20:.1f} MiB per input, chunk {chunk} in "
                                             f"{budget / 2**30:.2f} GiB; peak {peak / 2**30:.2f} GiB"}
