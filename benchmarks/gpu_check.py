"""Every path a GPU user runs, checked in one go: a markdown table of pass/FAIL, images/s and peak memory.

    python benchmarks/gpu_check.py                       # one GPU (sized for under 5 minutes on an H200)
    python benchmarks/gpu_check.py --out gpu_check.md    # also write the table to a file
    python benchmarks/gpu_check.py --device cpu --small  # smoke test of the script itself (seconds)

Checks (each in its own try/except, so one failure hides nothing else; exit code 1 if any failed):

1. build: the real ADM-256 architecture (random weights; 552.8M parameters, 37 blocks), built directly
   on the device (``with torch.device(dev)``), falling back to a CPU build and ``.to(dev)``.
2. extract: ``FeatureExtractor`` at t=150, b=24 and with DifFormer's T={90,150,300} x B={19,24,30}, in
   fp32, bf16 and fp16 autocast: images/s, finite outputs, and the relative error of bf16/fp16 against fp32
   (||x - x_fp32|| / ||x_fp32||, worst (t, b)). ADM zero-initialises the last layer of every residual
   branch; those weights get random values first, so that every branch takes part in the comparison.
   "fp32" is PyTorch's default on CUDA, so convolutions may use TF32. Then ``chunk_size="auto"`` under a
   budget of a quarter of the free memory: the chunk picked from the measured cost per input, and the
   peak of two chunks' extraction (the allocator's count), which must stay within the budget.
3. step: one training step of every head (linear, mlp, cnn, attention, difformer, difeed), built by
   ``build_head`` with the paper's sizes (dim 1024, depth 2, 8 heads, 1000 classes), through the
   trainer's ``Classifier`` on the frozen U-Net, under fp16 autocast with ``torch.amp.GradScaler``: the
   loss is finite, the head's parameters change (a step the scaler skips for an overflow is retried, up
   to 4 times, as its scale falls), the U-Net gets no gradient. images/s: a further, warm step on CUDA,
   the step itself on the CPU.
4. train: ``difrep.training.train`` end to end (data loader, training, ``evaluate()``, checkpoint) on a
   tiny folder data set of random PNGs written to a temporary folder, 1 epoch, with a 64x64 ADM:
   fp16 (Attention head; the checkpoint is then re-evaluated by ``evaluate_checkpoint`` and must give the
   same accuracy), bf16 (DifFeed) and fp16 with ``run.finetune=true`` (linear; the U-Net must change).
   The trainer picks its device itself (CUDA whenever present); with ``--device cpu`` the script hides
   the GPUs (CUDA_VISIBLE_DEVICES="") before torch starts.
5. segmentation: ``train_segmentation`` end to end (UperNet on the ADM's frozen features, bf16 on CUDA) on a
   tiny ADE20K-layout data set written to a temporary folder, slide evaluation counting every pixel, and
   ``evaluate_segmentation_checkpoint`` of its checkpoint giving the same mIoU.
6. detection: ``train_detection`` end to end (Mask R-CNN on the ADM's frozen features, bf16 on CUDA) on a tiny
   COCO-layout data set of discs written to a temporary folder, COCOeval over every test image, and
   ``evaluate_detection_checkpoint`` of its checkpoint giving the same box and mask AP.
7. knn / cka: ``knn_accuracy`` and ``cka_matrix`` (exact, and the minibatch estimate) on device tensors
   give the same results as on CPU tensors.
8. ddp: with 2 or more GPUs, ``torchrun --nproc_per_node 2 -m difrep.cli.main train ...`` (NCCL) on the
   tiny data set next to a 1-process run of the same global batch: both count every test image once,
   and a 1-process ``difrep evaluate`` of the 2-process checkpoint gives the 2-process run's accuracy.

``--small`` swaps ADM-256 for a tiny ADM (8x8 input, 1.4M parameters, 13 blocks; the paper's blocks
become its middle block 7, decoder block 10 at 4x4 and decoder block 12 at 8x8) and the heads for small
ones, so that the script runs on a CPU in seconds, on one thread (tiny tensors gain nothing from more, and
threads fighting another busy process made the run five times slower). On the CPU the peak-memory column
is "-". Without ``--small`` a CPU takes hours: PyTorch's CPU convolutions under bf16/fp16 autocast are
hundreds of times slower than in fp32 on the 2-core machine this was written on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# guided-diffusion's flags, as create_model takes them
TINY_ADM = {"image_size": 8, "num_channels": 32, "channel_mult": "1,2,2", "num_res_blocks": 1,
            "attention_resolutions": "4,2", "num_head_channels": 16, "resblock_updown": True,
            "use_scale_shift_norm": True, "learn_sigma": True}
TRAIN_ADM = {"image_size": 64, "num_channels": 64, "num_res_blocks": 2, "attention_resolutions": "32,16,8",
             "num_head_channels": 32, "resblock_updown": True, "use_scale_shift_norm": True, "learn_sigma": True}

# relative error of autocast features against fp32 that still passes
TOLERANCE = {"bf16": 0.08, "fp16": 0.02}


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

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def backbone(self) -> Any:
        if self.model is None:
            raise RuntimeError("the backbone was not built (see the build row)")
        return self.model


# ------------------------------------------------------------------------------------------------ helpers

def _randomize_zero_init(model: Any, seed: int = 0) -> int:
    """Give ADM's zero-initialised weights (the last layer of every residual branch) random values."""
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


def _rel_err(a: Any, ref: Any) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()


def _timed(setup: Setup, fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls (the device synchronised), and the last result."""
    best, out = math.inf, None
    for _ in range(repeats):
        setup.sync()
        start = time.perf_counter()
        out = fn()
        setup.sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def _write_folder_dataset(root: Path, size: int, classes: int, train: int, test: int) -> None:
    """ROOT/{train,test}/<class>/*.png of random RGB noise, a little larger than the model's input."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size + 8, size + 4, 3), dtype=np.uint8)
                pixels[..., c % 3] //= 2  # a class-dependent colour cast
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _data_root(setup: Setup) -> Path:
    if setup.data_root is None:
        root = setup.tmp / "data"
        _write_folder_dataset(root, setup.train_flags["image_size"], classes=4, train=2, test=2)
        setup.data_root = root
    return setup.data_root


def _train_overrides(setup: Setup, out: Path, **extra: Any) -> list[str]:
    base: dict[str, Any] = {
        "model.name": "adm", "model.flags": json.dumps(setup.train_flags), "data.name": "folder",
        "data.root": str(_data_root(setup)), "data.check": "false", "data.workers": 2,
        "features.timesteps": "[150]", "features.blocks": f"[{setup.train_block}]",
        "head.name": "attention", "head.dim": setup.train_head["dim"], "head.depth": setup.train_head["depth"],
        "head.num_heads": setup.train_head["num_heads"], "optim.batch_size": 8, "optim.epochs": 1,
        "optim.eval_every": 1, "optim.lr": 0.01, "run.out": str(out), "run.progress": "false",
        "run.tensorboard": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ checks

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
    _randomize_zero_init(model)
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


def make_extract_check(case: str, dtype_name: str, reference: dict[str, Any]) -> Callable[[Setup], dict[str, Any]]:
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
        seconds, out = _timed(setup, lambda: ext(x, indices=indices), repeats)
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
            err, where = max((_rel_err(v.cpu(), reference[case][k]), k) for k, v in out.items())
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
    seconds, (out, peak) = _timed(setup, lambda: measure_peak(lambda: ext(x, indices=list(range(images))), setup.dev), 1)
    if not all(torch.isfinite(v).all() for v in out.values()):
        raise AssertionError("non-finite features")
    if peak > budget:
        raise AssertionError(f"peak {peak / 2**20:.0f} MiB over the budget of {budget / 2**20:.0f} MiB")
    return {"ips": images / seconds, "note": f"{cost.per_input_bytes / 2**20:.1f} MiB per input, chunk {chunk} in "
                                             f"{budget / 2**30:.2f} GiB; peak {peak / 2**30:.2f} GiB"}


def make_step_check(head_name: str) -> Callable[[Setup], dict[str, Any]]:
    def check(setup: Setup) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        from difrep.training.config import FeatureConfig, HeadConfig, TrainConfig
        from difrep.training.trainer import Classifier, block_shapes, build_head

        model = setup.backbone()
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)
        timesteps, blocks = setup.fusion if head_name == "difformer" else ([setup.gd[0]], [setup.gd[1]])
        s = setup.head_sizes
        cfg = TrainConfig(features=FeatureConfig(timesteps=list(timesteps), blocks=list(blocks)),
                          head=HeadConfig(name=head_name, dim=s["dim"], depth=s["depth"], num_heads=s["num_heads"],
                                          hidden=list(s["hidden"]), conv_channels=list(s["conv_channels"])))
        torch.manual_seed(0)
        head = build_head(cfg, setup.num_classes, block_shapes(model, cfg.features.blocks), model)
        clf = Classifier(model, head, cfg.features.timesteps, cfg.features.blocks, seed=0, finetune=False)
        clf = clf.to(setup.dev)
        clf.train(True)
        model.eval()  # as the trainer does for a frozen U-Net
        params = [p for p in clf.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head.parameters() if p.requires_grad}
        if not params or any(id(p) not in head_ids for p in params):
            raise AssertionError("the trainable parameters must be exactly the head's")
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler(setup.dev.type)
        n = setup.head_batch
        gen = torch.Generator().manual_seed(2)
        x = (torch.rand(n, 3, model.image_size, model.image_size, generator=gen) * 2 - 1).to(setup.dev)
        y = torch.randint(0, setup.num_classes, (n,), generator=gen).to(setup.dev)
        indices = list(range(n))

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(setup.dev.type, dtype=torch.float16):
                loss = F.cross_entropy(clf(x, indices).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return loss.item()

        before = [p.detach().clone() for p in params]
        skipped = 0
        for _attempt in range(4):
            scale = scaler.get_scale()
            last, loss = _timed(setup, step, 1)
            if not math.isfinite(loss):
                raise AssertionError(f"loss {loss}")
            if scaler.get_scale() >= scale:  # the step was taken
                break
            skipped += 1
        else:
            raise AssertionError(f"GradScaler skipped {skipped} steps in a row (inf/nan gradients)")
        changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, params))
        if changed == 0:
            raise AssertionError("no head parameter changed after scaler.step")
        if any(p.grad is not None for p in model.parameters()):
            raise AssertionError("the frozen U-Net received gradients")
        seconds = last
        if setup.cuda:  # the first steps paid for cuDNN autotuning and the allocator: time a warm one
            seconds, loss2 = _timed(setup, step, 1)
            if not math.isfinite(loss2):
                raise AssertionError(f"second step: loss {loss2}")
        note = (f"loss {loss:.3f}, {changed}/{len(params)} tensors changed, "
                f"{sum(p.numel() for p in params) / 1e6:.1f}M params")
        if skipped:
            note += f", {skipped} step(s) skipped by the scaler first"
        return {"ips": n / seconds, "note": note}

    return check


def make_train_check(precision: str, head_name: str, finetune: bool) -> Callable[[Setup], dict[str, Any]]:
    def check(setup: Setup) -> dict[str, Any]:
        import torch

        from difrep.training import load_config, train
        from difrep.training.trainer import evaluate_checkpoint

        out = setup.tmp / f"train_{precision}_{head_name}{'_ft' if finetune else ''}"
        cfg = load_config(None, _train_overrides(setup, out, **{
            "run.precision": precision, "head.name": head_name, "run.finetune": str(finetune).lower(),
            "optim.lr": 0.001 if finetune else 0.01}))
        metrics = train(cfg)
        if setup.cuda and torch.cuda.max_memory_allocated() == 0:
            raise AssertionError("nothing was allocated on the GPU: the trainer did not run there")
        n_test = sum(1 for _ in (_data_root(setup) / "test").rglob("*.png"))
        n_train = sum(1 for _ in (_data_root(setup) / "train").rglob("*.png"))
        if metrics.get("images") != n_test:
            raise AssertionError(f"evaluate() counted {metrics.get('images')} test images, expected {n_test}")
        if not math.isfinite(metrics["loss"]):
            raise AssertionError(f"loss {metrics['loss']}")
        for name in ("last.pt", "metrics.json", "metrics.csv"):
            if not (out / name).is_file():
                raise AssertionError(f"{name} was not written")
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        tuned = [k for k in state["weights"] if k.startswith("model.")]
        if finetune != bool(tuned):
            raise AssertionError(f"run.finetune={finetune} but the checkpoint holds {len(tuned)} U-Net tensors")
        note = f"loss {metrics['loss']:.3f}, top-1 {metrics['top1']:.1f}% of {n_test}"
        if finetune:
            from difrep import create_model

            torch.manual_seed(cfg.run.seed)  # the trainer's seed before it builds the U-Net
            init = create_model(cfg.model.name, **cfg.model.flags).state_dict()
            # the trainer may prune the blocks after the deepest one the head reads: compare what was kept
            kept = [k[len("model."):] for k in tuned if k[len("model."):] in init]
            if not kept:
                raise AssertionError(f"the checkpoint's U-Net tensors do not match the model's names: {tuned[:3]}")
            moved = sum(not torch.equal(state["weights"]["model." + k], init[k]) for k in kept)
            if moved == 0:
                raise AssertionError("run.finetune=true left the U-Net unchanged")
            note += f", {moved}/{len(kept)} U-Net tensors changed"
        if precision == "fp16" and not finetune:
            again = evaluate_checkpoint(out / "last.pt", {"run.progress": False})
            if abs(again["top1"] - metrics["top1"]) > 100 / n_test + 1e-9 or again["images"] != n_test:
                raise AssertionError(f"evaluate_checkpoint gives top-1 {again['top1']:.2f}% of {again['images']}, "
                                     f"training ended with {metrics['top1']:.2f}% of {n_test}")
            note += ", evaluate_checkpoint agrees"
        return {"ips": (n_train + n_test) / metrics["seconds"], "note": note}

    return check


def _write_segmentation_dataset(root: Path, size: int, train: int, test: int) -> None:
    """ADEChallengeData2016/{images,annotations}/{training,validation}: a bright disc (class 2) on noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for split, count in (("training", train), ("validation", test)):
        for kind in ("images", "annotations"):
            (root / "ADEChallengeData2016" / kind / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            cy, cx, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [size // 4]
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            pixels = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
            pixels[disc] += 120
            mask = np.where(disc, 3, 1).astype(np.uint8)  # 1 = background, 3 = the disc's class
            Image.fromarray(pixels).save(root / "ADEChallengeData2016" / "images" / split / f"{i}.png")
            Image.fromarray(mask, mode="L").save(root / "ADEChallengeData2016" / "annotations" / split / f"{i}.png")


def check_segmentation(setup: Setup) -> dict[str, Any]:
    """UperNet end to end on the device (bf16 on CUDA): training, slide evaluation, checkpoint re-evaluation."""
    import torch

    from difrep.dense import evaluate_segmentation_checkpoint, load_segmentation_config, train_segmentation

    size = setup.train_flags["image_size"]
    root = setup.tmp / "segmentation"
    _write_segmentation_dataset(root, size, train=8, test=4)
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


def _write_coco_dataset(root: Path, size: int, train: int, test: int) -> None:
    """images/{train,val}/ and annotations/instances_{train,val}.json: one or two bright discs (one category)."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("val", test)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            pixels = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
            for _ in range(1 + i % 2):
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2).tolist()
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2
                pixels[disc] = 200
                rle = mask_utils.encode(np.asfortranarray(disc.astype(np.uint8)))
                ys, xs = np.nonzero(disc)
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                    "area": int(disc.sum()), "segmentation": {"size": [size, size],
                                                                              "counts": rle["counts"].decode()},
                                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                             int(ys.max() - ys.min() + 1)]})
            Image.fromarray(pixels).save(root / "images" / split / f"{i}.png")
            images.append({"id": i + 1, "file_name": f"{i}.png", "height": size, "width": size})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "disc"}]}))


def check_detection(setup: Setup) -> dict[str, Any]:
    """Mask R-CNN end to end on the device (bf16 on CUDA): training, COCOeval, checkpoint re-evaluation."""
    import torch

    from difrep.dense import evaluate_detection_checkpoint, load_detection_config, train_detection

    size = 64
    root = setup.tmp / "detection"
    _write_coco_dataset(root, size, train=8, test=4)
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


def check_knn(setup: Setup) -> dict[str, Any]:
    import torch

    from difrep.evaluation import knn_accuracy

    gen = torch.Generator().manual_seed(3)
    classes, dim = 10, 256
    centres = torch.randn(classes, dim, generator=gen)
    ytr, yte = torch.randint(0, classes, (4000,), generator=gen), torch.randint(0, classes, (1000,), generator=gen)
    xtr = centres[ytr] + 2.0 * torch.randn(len(ytr), dim, generator=gen)
    xte = centres[yte] + 2.0 * torch.randn(len(yte), dim, generator=gen)
    cpu = knn_accuracy(xtr, ytr, xte, yte, classes, ks=(20, 200))
    d = setup.dev
    seconds, dev = _timed(setup, lambda: knn_accuracy(xtr.to(d), ytr.to(d), xte.to(d), yte.to(d), classes,
                                                      ks=(20, 200)), 1)
    worst = 0.0
    for k in cpu:
        for top in cpu[k]:
            a, b = float(cpu[k][top]), float(dev[k][top])
            worst = max(worst, abs(a - b))
            if abs(a - b) > 100 / len(yte) + 1e-9:  # one test image may flip on a near tie
                raise AssertionError(f"k={k} top-{top}: {b:.2f}% on {d}, {a:.2f}% on cpu")
    return {"ips": len(yte) / seconds, "note": f"top-1@20 {float(cpu[20][1]):.1f}%, max diff {worst:.2f} points"}


def check_cka(setup: Setup) -> dict[str, Any]:
    import torch

    from difrep.evaluation import cka_matrix

    gen = torch.Generator().manual_seed(4)
    base = torch.randn(512, 64, generator=gen)
    xs = [base @ torch.randn(64, 96, generator=gen) + 0.5 * torch.randn(512, 96, generator=gen) for _ in range(3)]
    ys = [base @ torch.randn(64, 48, generator=gen), torch.randn(512, 8, 4, 4, generator=gen)]
    d = setup.dev
    worst = {}
    for label, bs in (("exact", None), ("minibatch", 128)):
        cpu = cka_matrix(xs, ys, batch_size=bs)
        dev = cka_matrix([x.to(d) for x in xs], [y.to(d) for y in ys], batch_size=bs)
        diff = (dev.detach().cpu().double() - cpu.double()).abs().max().item()
        worst[label] = diff
        if not diff <= 1e-6:
            raise AssertionError(f"{label} CKA differs by {diff:.2e} between {d} and cpu")
    return {"note": f"max diff exact {worst['exact']:.1e}, minibatch {worst['minibatch']:.1e}"}


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
                        str(_free_port()), "-m", "difrep.cli.main", "train",
                        *_train_overrides(setup, two, **head, **{"optim.batch_size": 4})],
        "1 process": [sys.executable, "-m", "difrep.cli.main", "train",
                      *_train_overrides(setup, one, **head, **{"optim.batch_size": 8})],
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
    n_test = sum(1 for _ in (_data_root(setup) / "test").rglob("*.png"))
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


# ------------------------------------------------------------------------------------------------ driver

def all_checks(setup: Setup) -> list[tuple[str, Callable[[Setup], dict[str, Any]]]]:
    gd = f"t={setup.gd[0]}, b={setup.gd[1]}"
    ts, bs = setup.fusion
    fusion = f"T={{{','.join(map(str, ts))}}} x B={{{','.join(map(str, bs))}}}"
    model = f"tiny ADM {TINY_ADM['image_size']}" if setup.small else "ADM-256"
    checks: list[tuple[str, Callable[[Setup], dict[str, Any]]]] = [(f"build {model} on {setup.dev.type}", check_build)]
    reference: dict[str, Any] = {}
    for case, label in (("gd", gd), ("fusion", fusion)):
        for dtype in ("fp32", "bf16", "fp16"):
            checks.append((f"extract {label} {dtype}, {setup.images} images", make_extract_check(case, dtype, reference)))
    checks.append((f"extract chunk_size=auto {fusion} within a memory budget", check_auto_chunk))
    for head in ("linear", "mlp", "cnn", "attention", "difformer", "difeed"):
        checks.append((f"train step fp16+GradScaler: {head}", make_step_check(head)))
    for precision, head, finetune in (("fp16", "attention", False), ("bf16", "difeed", False), ("fp16", "linear", True)):
        label = f"train() {precision} {head}{' finetune' if finetune else ''}, 1 epoch, eval + checkpoint"
        checks.append((label, make_train_check(precision, head, finetune)))
    checks.append(("segmentation: UperNet train + slide eval + checkpoint", check_segmentation))
    checks.append(("detection: Mask R-CNN train + COCOeval + checkpoint", check_detection))
    checks.append(("knn_accuracy on device = cpu", check_knn))
    checks.append(("cka_matrix exact + minibatch on device = cpu", check_cka))
    checks.append(("DDP 2 processes (NCCL) vs 1 process", check_ddp))
    return checks


def run_check(setup: Setup, name: str, fn: Callable[[Setup], dict[str, Any]]) -> dict[str, Any]:
    import torch

    if setup.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(setup.dev)
    start = time.perf_counter()
    ips: float | None = None
    try:
        result = fn(setup)
        ips = result.get("ips")
        status = "pass" + (f" ({result['note']})" if result.get("note") else "")
        ok = True
    except Skip as why:
        status, ok = f"skipped ({why})", True
    except Exception as err:  # noqa: BLE001 - every failure becomes a row
        lines = str(err).strip().splitlines()
        message = lines[0] if lines else ""
        status, ok = f"FAIL: {type(err).__name__}: {message[:300]}", False
        print(f"--- {name} failed:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
    peak = f"{torch.cuda.max_memory_allocated(setup.dev) / 2**20:.0f}" if setup.cuda else "-"
    row = {"check": name, "status": status.replace("|", "/"), "ips": "-" if ips is None else f"{ips:.1f}",
           "peak": peak, "ok": ok, "seconds": time.perf_counter() - start}
    print(f"[{row['seconds']:6.1f} s] {name}: {row['status']}", file=sys.stderr, flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| check | status | images/s | peak GPU memory (MiB) |", "|---|---|---:|---:|"]
    lines += [f"| {r['check']} | {r['status']} | {r['ips']} | {r['peak']} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda",
                        help="cuda (default) or cpu; to use another GPU set CUDA_VISIBLE_DEVICES (train() and "
                        "the DDP run take cuda:0 / cuda:LOCAL_RANK themselves)")
    parser.add_argument("--small", action="store_true", help="a tiny ADM and small heads everywhere (CPU smoke test)")
    parser.add_argument("--out", help="also write the table as markdown to this file")
    parser.add_argument("--images", type=int, help="images per extraction batch (default 32 on CUDA)")
    parser.add_argument("--only", help="run only the checks whose name contains this text (build always runs)")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch starts: the trainer picks CUDA whenever it sees one

    import torch

    import difrep

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available here: use --device cpu --small for a smoke test", file=sys.stderr)
        return 1
    setup = Setup(args)
    if setup.cuda:
        torch.cuda.set_device(setup.dev)
    elif setup.small:
        torch.set_num_threads(1)  # tiny tensors: threads cost more than they give, and far more on a busy CPU
    gpu = torch.cuda.get_device_name(setup.dev) if setup.cuda else "-"
    header = (f"difrep gpu_check: device {setup.dev} ({gpu}), torch {torch.__version__}, "
              f"difrep {getattr(difrep, '__version__', '?')}, {'--small' if setup.small else 'ADM-256'}")
    print(header, file=sys.stderr, flush=True)
    began = time.perf_counter()
    rows = []
    try:
        for name, fn in all_checks(setup):
            if args.only and fn is not check_build and args.only not in name:
                continue
            rows.append(run_check(setup, name, fn))
    finally:
        import shutil

        shutil.rmtree(setup.tmp, ignore_errors=True)
    text = f"{header}, {time.perf_counter() - began:.0f} s\n\n{table(rows)}\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
