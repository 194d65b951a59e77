"""detection: ``train_detection`` (Mask R-CNN) end to end, COCOeval and checkpoint re-evaluation."""

from __future__ import annotations

import json
import math
from typing import Any

from .common import Setup, scenes_root


def check_detection(setup: Setup) -> dict[str, Any]:
    """Mask R-CNN end to end on the device (bf16 on CUDA): training, COCOeval, checkpoint re-evaluation."""
    import torch

    from difrep.dense import evaluate_detection_checkpoint, load_detection_config, train_detection

    size = 64
    root = scenes_root(setup)
    out = setup.tmp / "detection_run"
    overrides = {
        "task": "detection", "model.name": "adm", "model.flags": json.dumps(setup.train_flags),
        "data.root": str(root), "data.check": "false", "data.workers": 2, "data.size": size,
        "data.scale_range": "[0.8, 1.25]", "features.timesteps": "[75]", "features.blocks": f"[{setup.train_block}]",
        "features.input_size": setup.train_flags["image_size"], "head.out_channels": 32, "head.box_head": "mlp",
        "head.representation": 64, "head.mask_convs": 2, "head.roi_batch": 64, "optim.batch_size": 4,
        "optim.iterations": 4, "optim.warmup": 1, "optim.lr": 1e-3, "run.log_every": 4, "run.eval_every": 4,
        "run.precision": "bf16" if setup.cuda else "fp32", "run.out": str(out), "run.progress": "false",
        "run.tensorboard": "false", "run.draw": 2,
    }
    metrics = train_detection(load_detection_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    if setup.cuda and torch.cuda.max_memory_allocated() == 0:
        raise AssertionError("nothing was allocated on the GPU: the detection task did not run there")
    if not math.isfinite(metrics["loss"]) or not 0 <= metrics["bbox_AP"] <= 100 or metrics["images"] != 4:
        raise AssertionError(f"loss {metrics['loss']}, box AP {metrics['bbox_AP']}, {metrics['images']} images")
    again = evaluate_detection_checkpoint(out / "last.pt", {"run.progress": False})
    if (again["bbox_AP"], again["segm_AP"]) != (metrics["bbox_AP"], metrics["segm_AP"]):
        raise AssertionError(f"evaluate_detection_checkpoint gives {again['bbox_AP']}/{again['segm_AP']}, training "
                             f"{metrics['bbox_AP']}/{metrics['segm_AP']}")
    if not (out / "predictions.png").is_file():
        raise AssertionError("predictions.png was not written")
    return {"ips": 16 / metrics["seconds"], "note": f"loss {metrics['loss']:.3f}, box AP {metrics['bbox_AP']:.1f}, "
                                                   f"mask AP {metrics['segm_AP']:.1f}, re-evaluation agrees"}
