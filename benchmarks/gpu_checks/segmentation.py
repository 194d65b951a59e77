"""segmentation: ``train_segmentation`` (UperNet) end to end, slide evaluation and checkpoint re-evaluation."""

from __future__ import annotations

import json
import math
from typing import Any

from .common import Setup, scenes_root


def check_segmentation(setup: Setup) -> dict[str, Any]:
    """UperNet end to end on the device (bf16 on CUDA): training, slide evaluation, checkpoint re-evaluation."""
    import torch

    from difrep.dense import evaluate_segmentation_checkpoint, load_segmentation_config, train_segmentation

    size = setup.train_flags["image_size"]
    root = scenes_root(setup)
    out = setup.tmp / "segmentation_run"
    overrides = {
        "task": "segmentation", "model.name": "adm", "model.flags": json.dumps(setup.train_flags),
        "data.name": "scenes", "data.root": str(root), "data.check": "false", "data.workers": 2,
        "data.crop": size, "data.scale": f"[{size}, {size}]", "data.ratio_range": "[0.75, 1.5]",
        "features.timesteps": "[90]", "features.blocks": f"[{setup.train_block}]", "features.input_size": size,
        "head.channels": 64, "head.decoder_channels": 64, "optim.batch_size": 4, "optim.iterations": 4,
        "optim.warmup": 1, "optim.lr": 1e-3, "run.log_every": 4, "run.eval_every": 4, "run.slide": "true",
        "run.stride": size // 2, "run.precision": "bf16" if setup.cuda else "fp32", "run.out": str(out),
        "run.progress": "false", "run.tensorboard": "false", "run.overlays": 2,
    }
    metrics = train_segmentation(load_segmentation_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    if setup.cuda and torch.cuda.max_memory_allocated() == 0:
        raise AssertionError("nothing was allocated on the GPU: the segmentation task did not run there")
    if not math.isfinite(metrics["loss"]) or not 0 <= metrics["mIoU"] <= 100:
        raise AssertionError(f"loss {metrics['loss']}, mIoU {metrics['mIoU']}")
    if metrics["pixels"] != 4 * size * size:
        raise AssertionError(f"evaluation counted {metrics['pixels']} pixels, expected {4 * size * size}")
    again = evaluate_segmentation_checkpoint(out / "last.pt", {"run.progress": False})
    if abs(again["mIoU"] - metrics["mIoU"]) > 1e-6:
        raise AssertionError(f"evaluate_segmentation_checkpoint gives {again['mIoU']:.3f}, training {metrics['mIoU']:.3f}")
    if not (out / "overlays.png").is_file():
        raise AssertionError("overlays.png was not written")
    return {"ips": 16 / metrics["seconds"], "note": f"loss {metrics['loss']:.3f}, mIoU {metrics['mIoU']:.1f}, "
                                                   "re-evaluation agrees"}
