"""ddp: 2 processes (NCCL) under torchrun against 1 process of the same global batch, with 2 GPUs or more."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from typing import Any

from .common import Setup, Skip, count_images, data_root, train_overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_ddp(setup: Setup) -> dict[str, Any]:
    import torch

    gpus = torch.cuda.device_count() if setup.cuda else 0
    if gpus < 2:
        raise Skip(f"{gpus} GPU" + ("" if gpus == 1 else "s"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4"}
    one, two = setup.tmp / "ddp_1proc", setup.tmp / "ddp_2proc"
    head = {"head.name": "attention"}
    cmds = {
        "2 processes": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), "-m", "difrep.cli.main", "train",
                        *train_overrides(setup, two, **head, **{"optim.batch_size": 4})],
        "1 process": [sys.executable, "-m", "difrep.cli.main", "train",
                      *train_overrides(setup, one, **head, **{"optim.batch_size": 8})],
        "evaluate": [sys.executable, "-m", "difrep.cli.main", "evaluate", str(two / "last.pt"),
                     "--out", str(setup.tmp / "ddp_eval.json"), "run.progress=false"],
    }
    for label, cmd in cmds.items():
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise AssertionError(f"{label} exited {proc.returncode}: {tail[0]}")
    m1, m2 = (json.loads((p / "metrics.json").read_text()) for p in (one, two))
    ev = json.loads((setup.tmp / "ddp_eval.json").read_text())
    n_test = count_images(data_root(setup) / "test")
    if not m1["images"] == m2["images"] == ev["images"] == n_test:
        raise AssertionError(f"test images counted: 1 process {m1['images']}, 2 processes {m2['images']}, "
                             f"evaluate {ev['images']}, expected {n_test}")
    if not (math.isfinite(m1["loss"]) and math.isfinite(m2["loss"])):
        raise AssertionError(f"losses {m1['loss']}, {m2['loss']}")
    for key in ("top1", "top5"):
        if abs(ev[key] - m2[key]) > 100 / n_test + 1e-9:
            raise AssertionError(f"{key}: 2-process run {m2[key]:.2f}%, its checkpoint on 1 process {ev[key]:.2f}%")
    return {"note": f"top-1 1 proc {m1['top1']:.1f}%, 2 procs {m2['top1']:.1f}% (its checkpoint on 1 proc "
                    f"{ev['top1']:.1f}%), loss {m1['loss']:.3f} / {m2['loss']:.3f}"}
