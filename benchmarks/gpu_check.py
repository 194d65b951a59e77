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
   tiny folder data set (PNGs in their class's colour) written to a temporary folder, 1 epoch, with a 64x64 ADM:
   fp16 (Attention head; the checkpoint is then re-evaluated by ``evaluate_checkpoint`` and must give the
   same accuracy), bf16 (DifFeed) and fp16 with ``run.finetune=true`` (linear; the U-Net must change).
   The trainer picks its device itself (CUDA whenever present); with ``--device cpu`` the script hides
   the GPUs (CUDA_VISIBLE_DEVICES="") before torch starts.
5. segmentation: ``train_segmentation`` end to end (UperNet on the ADM's frozen features, bf16 on CUDA) on
   tiny scenes of fake garments in the ADE20K layout written to a temporary folder, slide evaluation counting
   every pixel, and ``evaluate_segmentation_checkpoint`` of its checkpoint giving the same mIoU.
6. detection: ``train_detection`` end to end (Mask R-CNN on the ADM's frozen features, bf16 on CUDA) on the
   same scenes in the COCO layout, COCOeval over every test image, and ``evaluate_detection_checkpoint`` of its
   checkpoint giving the same box and mask AP.
7. knn / cka: ``knn_accuracy`` and ``cka_matrix`` (exact, and the minibatch estimate) on device tensors
   give the same results as on CPU tensors.
8. dit: DiT-XL/2's shapes (random weights, 28 blocks of width 1152, a stand-in VAE): the middle block (14) and
   the output through difrep's traversal equal diffusers' own forward on the device (relative 1e-5), the
   extractor's bf16 features against fp32, and early exit at the middle block against diffusers' full forward.
9. ddp: with 2 or more GPUs, ``torchrun --nproc_per_node 2 -m difrep.cli.main train ...`` (NCCL) on the
   tiny data set next to a 1-process run of the same global batch: both count every test image once,
   and a 1-process ``difrep evaluate`` of the 2-process checkpoint gives the 2-process run's accuracy.

``--small`` swaps ADM-256 for a tiny ADM (and DiT-XL/2 for a 4-block DiT) (8x8 input, 1.4M parameters, 13 blocks; the paper's blocks
become its middle block 7, decoder block 10 at 4x4 and decoder block 12 at 8x8) and the heads for small
ones, so that the script runs on a CPU in seconds, on one thread (tiny tensors gain nothing from more, and
threads fighting another busy process made the run five times slower). On the CPU the peak-memory column
is "-". Without ``--small`` a CPU takes hours: PyTorch's CPU convolutions under bf16/fp16 autocast are
hundreds of times slower than in fp32 on the 2-core machine this was written on.

Each check is a module of ``benchmarks/gpu_checks/``; their tiny data sets are the test suite's fakes
(``tests/fakes.py``). This file is the driver: the list of checks, the table, the options.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from gpu_checks.build import check_build
from gpu_checks.common import TINY_ADM, Check, Setup, Skip
from gpu_checks.ddp import check_ddp
from gpu_checks.detection import check_detection
from gpu_checks.dit import check_dit
from gpu_checks.extract import check_auto_chunk, make_extract_check
from gpu_checks.segmentation import check_segmentation
from gpu_checks.similarity import check_cka, check_knn
from gpu_checks.step import make_step_check
from gpu_checks.train import make_train_check


def all_checks(setup: Setup) -> list[tuple[str, Check]]:
    gd = f"t={setup.gd[0]}, b={setup.gd[1]}"
    ts, bs = setup.fusion
    fusion = f"T={{{','.join(map(str, ts))}}} x B={{{','.join(map(str, bs))}}}"
    model = f"tiny ADM {TINY_ADM['image_size']}" if setup.small else "ADM-256"
    checks: list[tuple[str, Check]] = [(f"build {model} on {setup.dev.type}", check_build)]
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
    dit = "tiny DiT" if setup.small else "DiT-XL/2"
    checks.append((f"{dit} (random): blocks = diffusers' forward, bf16, middle-block exit", check_dit))
    checks.append(("DDP 2 processes (NCCL) vs 1 process", check_ddp))
    return checks


def run_check(setup: Setup, name: str, fn: Check) -> dict[str, Any]:
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
        shutil.rmtree(setup.tmp, ignore_errors=True)
    text = f"{header}, {time.perf_counter() - began:.0f} s\n\n{table(rows)}\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
