"""Helpers for comparing against guided-diffusion's own code (the PyPI package guided-diffusion-sdk)."""

from __future__ import annotations

import torch

GD_DEFAULTS = dict(
    image_size=32,
    num_channels=32,
    num_res_blocks=2,
    channel_mult="",
    learn_sigma=False,
    class_cond=False,
    use_checkpoint=False,
    attention_resolutions="16,8",
    num_heads=4,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
    dropout=0.0,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values: ADM zero-initialises whole branches, which would hide bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            scale = 1.0 / fan_in**0.5 if p.ndim > 1 else 0.3
            offset = 1.0 if name.endswith(("norm.weight", "layers.0.weight", "out.0.weight")) else 0.0
            p.copy_(offset + scale * torch.randn(p.shape, generator=gen))
    return module




def gd_unet(**overrides):
    """guided-diffusion's UNetModel built from the flags difrep accepts (conv_resample included)."""
    from guided_diffusion.unet import UNetModel

    f = {**GD_DEFAULTS, "conv_resample": True, **overrides}
    mult = f["channel_mult"] or {256: "1,1,2,2,4,4", 64: "1,2,3,4", 32: "1,2,2"}[f["image_size"]]
    return UNetModel(
        image_size=f["image_size"],
        in_channels=f.get("in_channels", 3),
        model_channels=f["num_channels"],
        out_channels=f.get("in_channels", 3) * (2 if f["learn_sigma"] else 1),
        num_res_blocks=f["num_res_blocks"],
        attention_resolutions=tuple(f["image_size"] // int(r) for r in f["attention_resolutions"].split(",")),
        dropout=f["dropout"],
        channel_mult=tuple(int(m) for m in mult.split(",")),
        conv_resample=f["conv_resample"],
        num_classes=1000 if f["class_cond"] else None,
        num_heads=f["num_heads"],
        num_head_channels=f["num_head_channels"],
        num_heads_upsample=f["num_heads_upsample"],
        use_scale_shift_norm=f["use_scale_shift_norm"],
        resblock_updown=f["resblock_updown"],
        use_new_attention_order=f["use_new_attention_order"],
    )


def cka_numpy(x, y) -> float:
    """Linear CKA in its kernel form with a centring matrix, tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)): an
    independent formula to check difrep's CKA against (x, y: float64 NumPy arrays [N, D])."""
    import numpy as np

    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    return np.trace(k @ h @ l @ h) / np.sqrt(np.trace(k @ h @ k @ h) * np.trace(l @ h @ l @ h))

