"""What the checks share: the set-up (device, sizes, the backbone, a temporary folder), timing, and the tiny data
sets, written with the test suite's own fakes (``tests/fakes.py``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[2] / "tests"
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))  # the fakes of the test suite: one source of tiny data sets

# guided-diffusion's flags, as create_model takes them
TINY_ADM = {"image_size": 8, "num_channels": 32, "channel_mult": "1,2,2", "num_res_blocks": 1,
            "attention_resolutions": "4,2", "num_head_channels": 16, "resblock_updown": True,
            "use_scale_shift_norm": True, "learn_sigma": True}
TRAIN_ADM = {"image_size": 64, "num_channels": 64, "num_res_blocks": 2, "attention_resolutions": "32,16,8",
             "num_head_channels": 32, "resblock_updown": True, "use_scale_shift_norm": True, "learn_sigma": True}

Check = Callable[["Setup"], dict[str, Any]]


class Skip(Exception):
    """A check that does not apply here (its row says 'skipped (reason)')."""


class Setup:
    """What the checks share: device, sizes, the backbone, the temporary folder."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        if self.cuda and self.dev.index is None:  # torch.cuda.set_device refuses a device without an index
            self.dev = torch.device("cuda", torch.cuda.current_device())
        self.small = args.small
        if self.small:
            self.gd = (150, 10)
            self.fusion = ([90, 150, 300], [7, 10, 12])
            self.head_sizes = {"dim": 64, "depth": 1, "num_heads": 4, "hidden": [32], "conv_channels": [16, 8]}
            self.num_classes = 10
            self.images = args.images or 2
            self.head_batch = 2
            self.train_flags, self.train_block = TINY_ADM, 10
            self.train_head = {"dim": 32, "depth": 1, "num_heads": 4}
        else:
            self.gd = (150, 24)
            self.fusion = ([90, 150, 300], [19, 24, 30])
            self.head_sizes = {"dim": 1024, "depth": 2, "num_heads": 8, "hidden": [1024], "conv_channels": [512, 256]}
            self.num_classes = 1000
            self.images = args.images or (32 if self.cuda else 2)
            self.head_batch = 8 if self.cuda else 2
            self.train_flags, self.train_block = TRAIN_ADM, 17  # decoder block at 16x16, like b=24 of ADM-256
            self.train_head = {"dim": 1024, "depth": 2, "num_heads": 8}
        self.model: Any = None
        self.tmp = Path(tempfile.mkdtemp(prefix="difrep_gpu_check_"))
        self.data_root: Path | None = None
        self.scenes_root: Path | None = None

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def backbone(self) -> Any:
        if self.model is None:
            raise RuntimeError("the backbone was not built (see the build row)")
        return self.model


def timed(setup: Setup, fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls (the device synchronised), and the last result."""
    best, out = math.inf, None
    for _ in range(repeats):
        setup.sync()
        start = time.perf_counter()
        out = fn()
        setup.sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def data_root(setup: Setup) -> Path:
    """ROOT/{train,test}/class_<c>/*.png, 4 classes of 2 training and 2 test images each, in the colour of their
    class (``fakes.write_image``) and a little larger than the model's input; written once."""
    from fakes import write_image

    if setup.data_root is None:
        root = setup.tmp / "data"
        size = setup.train_flags["image_size"]
        for split in ("train", "test"):
            for c in range(4):
                for i in range(2):
                    write_image(root / split / f"class_{c}" / f"{i}.png", c, size=(size + 4, size + 8))
        setup.data_root = root
    return setup.data_root


def scenes_root(setup: Setup) -> Path:
    """8 training and 4 test scenes of fake garments on canvases of the model's input size, in the ADE20K and
    COCO layouts (``fakes.make_fake_scenes``); written once for the segmentation and detection checks."""
    from fakes import make_fake_scenes

    if setup.scenes_root is None:
        size = setup.train_flags["image_size"]
        high = min(1.25, size / 28)  # garments are 28 px at scale 1: the largest must fit the canvas
        setup.scenes_root = make_fake_scenes(setup.tmp / "scenes", train=8, test=4, garments=20, canvas=size,
                                             min_items=1, max_items=2, scale_range=(0.7 * high, high))[1]
    return setup.scenes_root


def count_images(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.png"))


def train_overrides(setup: Setup, out: Path, **extra: Any) -> list[str]:
    """``difrep train`` options of a 1-epoch classification run on :func:`data_root` (attention head)."""
    base: dict[str, Any] = {
        "model.name": "adm", "model.flags": json.dumps(setup.train_flags), "data.name": "folder",
        "data.root": str(data_root(setup)), "data.check": "false", "data.workers": 2,
        "features.timesteps": "[150]", "features.blocks": f"[{setup.train_block}]",
        "head.name": "attention", "head.dim": setup.train_head["dim"], "head.depth": setup.train_head["depth"],
        "head.num_heads": setup.train_head["num_heads"], "optim.batch_size": 8, "optim.epochs": 1,
        "optim.eval_every": 1, "optim.lr": 0.01, "run.out": str(out), "run.progress": "false",
        "run.tensorboard": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
