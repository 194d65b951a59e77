"""dit: DiT-XL/2's shapes (random weights) on the device: difrep's blocks equal diffusers' own forward, the
extractor in bf16 against fp32, and early exit at the middle block against diffusers' full forward."""

from __future__ import annotations

from typing import Any

from .common import Setup, timed


def _dit(setup: Setup) -> Any:
    import torch
    from backbone_factories import dit_on_stand_in_vae

    torch.manual_seed(0)
    shape = {"size": "S", "depth": 4, "width": 64, "heads": 2, "sample_size": 8} if setup.small else {"size": "XL"}
    return dit_on_stand_in_vae(**shape).eval().to(setup.dev)


def check_dit(setup: Setup) -> dict[str, Any]:
    import torch

    from difrep import FeatureExtractor

    model = _dit(setup)
    n, middle = (2 if setup.small else 8), model.middle_block_index
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, *model.input_shape, generator=gen).to(setup.dev)
    t = torch.full((n,), 150, device=setup.dev)
    null = torch.full((n,), model.num_classes, device=setup.dev)
    seen: dict[int, torch.Tensor] = {}
    hook = model.transformer.transformer_blocks[middle - 1].register_forward_hook(
        lambda m, i, o: seen.__setitem__(middle, o))
    with torch.no_grad():
        full_s, own = timed(setup, lambda: model.transformer(x, t, class_labels=null).sample, 3)
        hook.remove()
        early_s, feats = timed(setup, lambda: model.forward_intermediates(x, t, [middle], stop_early=True), 3)
        out = model(x, t)
    tokens = feats[middle].flatten(2).transpose(1, 2)
    for what, a, b in (("block", tokens, seen[middle]), ("output", out, own)):
        gap = ((a - b).norm() / b.norm()).item()
        if not gap <= 1e-5:
            raise AssertionError(f"{what} {middle}: relative difference {gap:.1e} to diffusers' own forward")
    images = torch.rand(n, 3, model.image_size, model.image_size, generator=gen).to(setup.dev) * 2 - 1
    got = {}
    for dtype in (torch.float32, torch.bfloat16):
        extractor = FeatureExtractor(model, timesteps=[150], blocks=[middle], pool=2, dtype=dtype)
        got[dtype] = extractor(images, indices=list(range(n)))[(150, middle)].float()
    bf16 = ((got[torch.bfloat16] - got[torch.float32]).norm() / got[torch.float32].norm()).item()
    if not bf16 < 0.05:
        raise AssertionError(f"bf16 features differ from fp32 by {bf16:.3f} (relative)")
    return {"ips": n / early_s, "note": f"b={middle} = diffusers' forward, bf16 rel. error {bf16:.1e}, middle exit "
            f"{full_s / early_s:.2f}x faster than diffusers' full forward"}
