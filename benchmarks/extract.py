"""Feature extraction speed and peak memory with the real 256x256 ADM architecture (random weights).

Compares difrep's extractor (timesteps folded into one batch, U-Net stopped at the deepest block)
with the reference path of the authors' release: the whole U-Net run once per timestep, features
caught by hooks. Each case runs in a fresh process so that its peak memory is its own (on the
CPU: the process's peak resident memory, 2.1 GiB of weights included; on CUDA: peak allocated
device memory).

    python benchmarks/extract.py                      # CPU, 2 images, fp32 and bf16
    python benchmarks/extract.py --device cuda --images 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time

import torch
from measure import peak_bytes

CASES = {
    "GD (t=150, b=24)": dict(timesteps=[150], blocks=[24]),
    "DifFormer (T={90,150,300}, B={19,24,30})": dict(timesteps=[90, 150, 300], blocks=[19, 24, 30]),
}


def run_case(case: str, path: str, device: str, images: int, dtype: str, repeats: int) -> dict:
    from difrep import FeatureExtractor, create_model

    spec = CASES[case]
    model = create_model("adm-256-uncond").to(device)
    x = torch.rand(images, 3, 256, 256, device=device) * 2 - 1
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if path == "difrep":
        extractor = FeatureExtractor(model, chunk_size=max(images * len(spec["timesteps"]), 1),
                                     dtype=amp_dtype, **spec)

        def step() -> None:
            extractor(x, indices=list(range(images)))
    else:
        modules = [model.get_submodule(model.feature_info[b - 1].module) for b in spec["blocks"]]
        caught: list[torch.Tensor] = []
        for m in modules:
            m.register_forward_hook(lambda _m, _i, out: caught.append(out.float()))

        def step() -> None:
            caught.clear()
            eps = torch.randn_like(x)
            ctx = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with torch.no_grad(), ctx:
                for t in spec["timesteps"]:
                    model(model.diffusion.q_sample(x, t, eps), t)

    if device.startswith("cuda"):
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"seconds": best, "images_per_s": images / best, "peak_mib": peak_bytes(device) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2, help="images per batch")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats; the best is kept")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        print(json.dumps(run_case(args.case, args.path, args.device, args.images, args.dtype, args.repeats)))
        return

    print(f"device={args.device} images={args.images} torch={torch.__version__} threads={torch.get_num_threads()}")
    header = f"| {'case':42} | {'dtype':5} | {'path':27} | {'images/s':>8} | {'peak MiB':>8} | {'speed-up':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for case in CASES:
        for dtype in args.dtypes.split(","):
            results = {}
            for path in ("reference", "difrep"):
                out = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--path", path, "--dtype", dtype,
                     "--device", args.device, "--images", str(args.images), "--repeats", str(args.repeats)],
                    check=True, capture_output=True, text=True,
                )
                results[path] = json.loads(out.stdout.strip().splitlines()[-1])
            ref = results["reference"]["seconds"]
            for path, label in (("reference", "full U-Net per timestep"), ("difrep", "difrep (folded, stop early)")):
                r = results[path]
                print(f"| {case:42} | {dtype:5} | {label:27} | {r['images_per_s']:8.3f} | "
                      f"{r['peak_mib']:8.0f} | {ref / r['seconds']:7.2f}x |", flush=True)


if __name__ == "__main__":
    main()
