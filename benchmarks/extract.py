"""Feature extraction: difrep against guided-diffusion's own UNetModel, precision and compile options, the
end-to-end pipeline, and the memory a forward takes (the 256x256 ADM topology, random weights).

Sections (all by default):
  reference   guided-diffusion's ``UNetModel`` (the reference package) and difrep's ADM on the same weights and
              the same work: the full forward, early exit at b = 24 (guided-diffusion run block by block and
              stopped there), the DifFormer set (T = {90, 150, 300}, B = {19, 24, 30}: a batch of three per
              image, both stopped at block 30) and DifFeed's two passes (bottleneck feedback, first pass to
              block 36, second to 24). Speed ratio, images/s, peak memory above the weights, and the largest
              difference between the two outputs relative to their scale.
  options     difrep at b = 24 under bf16 / fp16 autocast, channels_last and torch.compile, against fp32.
  end-to-end  ``difrep extract``'s pipeline (JPEG decode, transform, noise, U-Net, pool, cache writing) against
              the extractor alone on tensors already in memory, same batch size.
  memory      the activation cost per input measured by ``chunk_size="auto"``, the largest chunk (images x
              timesteps) for several budgets, and a run at the chunk chosen for --budget-gib checked against it.
  chunks      the shipped 28-pixel model (``adm-fmnist-28``, as the study extracts: every block, pool 2) at
              fixed chunk sizes and at ``chunk_size="auto"``: where memory is no limit, the chunk still sets
              the speed (on a CPU, through the caches).

Every measurement runs in a fresh process, so that its peak memory is its own (CPU: the resident high-water
mark, reset before the timed calls; CUDA: peak allocated memory).

    python benchmarks/extract.py --width 64                   # quick, CPU
    python benchmarks/extract.py --width 256 --repeats 2      # the real width (num_channels 256)
    python benchmarks/extract.py --device cuda --images 16 --width 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

FLAGS_256 = dict(image_size=256, num_res_blocks=2, attention_resolutions="32,16,8", num_head_channels=64,
                 resblock_updown=True, learn_sigma=True, use_scale_shift_norm=True)
DIFFORMER = dict(timesteps=[90, 150, 300], blocks=[19, 24, 30])
CASES = ("full forward", "early exit b=24", "DifFormer set", "DifFeed two passes")
OPTIONS = ("fp32", "bf16 autocast", "fp16 autocast", "channels_last", "torch.compile")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_seconds(step, repeats: int, device: str) -> float:
    step()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def make_weights(width: int, path: Path) -> None:
    """Random weights for both implementations: every parameter drawn (ADM's zero-initialised branches
    would make the outputs trivial to match)."""
    from difrep import create_model

    model = create_model("adm-256-uncond", num_channels=width)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5 if p.ndim > 1 else 1 + 0.1 * torch.randn(p.shape, generator=gen))
    torch.save(model.state_dict(), path)


def guided_diffusion_model(width: int) -> torch.nn.Module:
    from guided_diffusion.script_util import create_model

    return create_model(**FLAGS_256, num_channels=width, channel_mult="", class_cond=False, use_checkpoint=False,
                        num_heads=4, num_heads_upsample=-1, dropout=0.0, use_fp16=False,
                        use_new_attention_order=False)


def gd_blocks(gd: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, wanted: set[int], last: int,
              feedback: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """guided-diffusion's UNetModel run block by block (its own modules and embedding), stopped at ``last``;
    ``feedback`` is added to encoder block outputs as DifFeed's second pass does."""
    from guided_diffusion.nn import timestep_embedding

    emb = gd.time_embed(timestep_embedding(t, gd.model_channels))
    modules = [*gd.input_blocks, gd.middle_block, *gd.output_blocks]
    skips, out, h = [], {}, x
    for b, module in enumerate(modules[:last], start=1):
        if b <= len(gd.input_blocks):
            h = module(h, emb)
            if feedback and b in feedback:
                h = h + feedback[b]
            skips.append(h)
        elif b == len(gd.input_blocks) + 1:
            h = module(h, emb)
        else:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        if b in wanted:
            out[b] = h
    return out


def case_runner(case: str, model: torch.nn.Module, reference: bool, feedback: torch.nn.Module,
                x: torch.Tensor, t: torch.Tensor):
    """The work of ``case`` on guided-diffusion's model (``reference``) or difrep's."""
    pairs = feedback.pairs
    steps = torch.tensor(DIFFORMER["timesteps"], device=x.device).repeat(len(x))

    def run() -> torch.Tensor | dict[int, torch.Tensor]:
        with torch.no_grad():
            if case == "full forward":
                return model(x, t)
            if case == "early exit b=24":
                return (gd_blocks(model, x, t, {24}, 24) if reference
                        else model.forward_intermediates(x, t, [24], stop_early=True))
            if case == "DifFormer set":
                x3 = x.repeat_interleave(3, dim=0)
                return (gd_blocks(model, x3, steps, set(DIFFORMER["blocks"]), 30) if reference
                        else model.forward_intermediates(x3, steps, DIFFORMER["blocks"], stop_early=True))
            sources = sorted({b for b, _ in pairs})
            first = (gd_blocks(model, x, t, set(sources), sources[-1]) if reference
                     else model.forward_intermediates(x, t, sources, stop_early=True))
            additions = feedback(first, 256)
            return (gd_blocks(model, x, t, {24}, 24, additions) if reference
                    else model.forward_intermediates(x, t, [24], stop_early=True, feedback=additions))

    return run


def reference_case(args: argparse.Namespace) -> dict:
    """Time one case on both implementations, interleaved call by call (this machine's speed drifts), or
    (``--path``) measure one implementation's peak memory alone in this process."""
    from difrep import create_model
    from difrep.features.memory import measure_peak
    from difrep.heads.difeed import Feedback, feedback_pairs

    device, n = args.device, args.images
    state = torch.load(args.weights, weights_only=True, mmap=True)
    ours = create_model("adm-256-uncond", num_channels=args.width)
    ours.load_state_dict(state)
    ours.eval().to(device)
    torch.manual_seed(1)
    x = torch.randn(n, 3, 256, 256, device=device)
    t = torch.full((n,), 150, device=device)
    feedback = Feedback(ours, feedback_pairs(ours, "bottleneck", 24)).eval().to(device)
    runs = {}
    if args.path != "difrep":
        gd = guided_diffusion_model(args.width)
        gd.load_state_dict(state)
        runs["guided-diffusion"] = case_runner(args.case, gd.eval().to(device), True, feedback, x, t)
    if args.path != "guided-diffusion":
        runs["difrep"] = case_runner(args.case, ours, False, feedback, x, t)
    else:
        del ours  # the feedback layers only needed its block widths
    if args.path:
        sync(device)
        _, peak = measure_peak(runs[args.path], device)
        return {"peak_bytes": peak}
    outputs = {name: run() for name, run in runs.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - start)
    gd_out, our_out = outputs["guided-diffusion"], outputs["difrep"]
    return {"seconds": {name: sorted(v) for name, v in times.items()},
            "difference": relative_difference(our_out, gd_out)}


def option_case(args: argparse.Namespace) -> dict:
    from difrep import FeatureExtractor

    device = args.device
    state = torch.load(args.weights, weights_only=True, mmap=True)
    from difrep import create_model

    model = create_model("adm-256-uncond", num_channels=args.width)
    model.load_state_dict(state)
    model.eval().to(device)
    dtype = {"bf16 autocast": torch.bfloat16, "fp16 autocast": torch.float16}.get(args.option)
    ex = FeatureExtractor(model, [150], [24], chunk_size=args.images, dtype=dtype,
                          channels_last=args.option == "channels_last", compile=args.option == "torch.compile")
    torch.manual_seed(1)
    images = torch.rand(args.images, 3, 256, 256, device=device) * 2 - 1
    indices = list(range(args.images))
    start = time.perf_counter()
    ex(images, indices=indices)
    sync(device)
    first_call = time.perf_counter() - start
    seconds = best_seconds(lambda: ex(images, indices=indices), args.repeats, device)
    torch.save(ex(images, indices=indices)[(150, 24)].cpu(), args.output)
    return {"seconds": seconds, "first_call": first_call}


def end_to_end_case(args: argparse.Namespace) -> dict:
    """The extractor alone on a batch in memory, then the cache writer over a folder of JPEGs."""
    import numpy as np
    from PIL import Image

    from difrep import FeatureExtractor, create_model
    from difrep.data import build_transform, load_split
    from difrep.features.cache import CacheWriter

    device, spec = args.device, json.loads(args.spec)
    model = create_model("adm-256-uncond", num_channels=args.width)
    model.load_state_dict(torch.load(args.weights, weights_only=True, mmap=True))
    model.eval().to(device)
    root = Path(args.workdir) / "images"
    if not root.exists():
        rng = np.random.default_rng(0)
        for i in range(args.e2e_images):
            folder = root / "train" / f"class{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
    data, _ = load_split("folder", root, "train", build_transform(256))

    ex = FeatureExtractor(model, spec["timesteps"], spec["blocks"], pool=spec["pool"])
    batch = torch.stack([data[i][0] for i in range(args.batch_size)]).to(device)
    ex(batch, indices=list(range(args.batch_size)))  # measures the chunk size, as the writer's first batch does
    sync(device)
    start = time.perf_counter()
    for first in range(0, args.e2e_images, args.batch_size):
        ex(batch, indices=list(range(first, first + args.batch_size)))
    sync(device)
    model_only = args.e2e_images / (time.perf_counter() - start)

    writer = CacheWriter(Path(args.workdir) / f"cache-{time.time_ns()}", model, spec["timesteps"], spec["blocks"],
                         [spec["pool"]], description={}, shard_size=max(args.e2e_images // 4, 1))
    start = time.perf_counter()
    writer.run(data, batch_size=args.batch_size, workers=args.workers, device=device, progress=False)
    sync(device)
    return {"model_only": model_only, "end_to_end": args.e2e_images / (time.perf_counter() - start)}


def memory_case(args: argparse.Namespace) -> dict:
    from difrep import FeatureExtractor, create_model
    from difrep.features.memory import measure_peak

    device, spec = args.device, json.loads(args.spec)
    model = create_model("adm-256-uncond", num_channels=args.width).eval().to(device)
    budget = int(args.budget_gib * 2**30)
    ex = FeatureExtractor(model, spec["timesteps"], spec["blocks"], pool=1, memory_budget=budget)
    probe = torch.rand(1, 3, 256, 256, device=device) * 2 - 1
    ex(probe, indices=[0])
    cost = next(iter(ex.activation_costs.values()))
    chunk = next(iter(ex.auto_chunks.values()))
    images = -(-chunk // len(spec["timesteps"]))  # enough images for one full chunk
    batch = torch.rand(images, 3, 256, 256, device=device) * 2 - 1
    sync(device)
    _, peak = measure_peak(lambda: ex(batch, indices=list(range(images))), device)
    return {"fixed": cost.fixed_bytes, "per_input": cost.per_input_bytes, "chunk": chunk, "peak": peak,
            "budget": budget}


def child(args: argparse.Namespace, timeout: float | None = None, **extra) -> dict:
    cmd = [sys.executable, __file__, "--device", args.device, "--images", str(args.images), "--width",
           str(args.width), "--repeats", str(args.repeats), "--weights", str(args.weights), "--workdir",
           str(args.workdir), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
           "--budget-gib", str(args.budget_gib), "--e2e-images", str(args.e2e_images)]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def relative_difference(a, b) -> float:
    """Largest absolute difference over the largest magnitude, across every returned tensor."""
    if isinstance(a, dict):
        return max(relative_difference(a[k], b[k]) for k in a)
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |", flush=True)


def reference_section(args: argparse.Namespace) -> None:
    print(f"\n### difrep vs guided-diffusion's UNetModel (width {args.width}, batch {args.images}, fp32, "
          f"{args.repeats} interleaved calls each; speed-up of the medians, and of the best calls)\n")
    rows = []
    for case in CASES:
        r = child(args, kind="reference", case=case)
        gd, ours = r["seconds"]["guided-diffusion"], r["seconds"]["difrep"]
        median = len(gd) // 2
        peaks = {path: child(args, kind="reference", case=case, path=path)["peak_bytes"] / 2**20
                 for path in ("guided-diffusion", "difrep")}
        rows.append([case, f"{args.images / gd[median]:.3f}", f"{args.images / ours[median]:.3f}",
                     f"{gd[median] / ours[median]:.2f}x", f"{gd[0] / ours[0]:.2f}x",
                     f"{peaks['guided-diffusion']:.0f}", f"{peaks['difrep']:.0f}", f"{r['difference']:.1e}"])
    table(["case", "guided-diffusion img/s", "difrep img/s", "speed-up (median)", "speed-up (best)",
           "GD peak MiB", "difrep peak MiB", "max rel. difference"], rows)


def options_section(args: argparse.Namespace) -> None:
    print(f"\n### difrep options at b = 24, t = 150 (width {args.width}, batch {args.images}, best of "
          f"{args.repeats})\n")
    res = {}
    for option in ["fp32", *(o for o in args.options.split(",") if o != "fp32")]:
        output = Path(args.workdir) / "option.pt"
        try:
            res[option] = child(args, timeout=args.option_timeout, kind="option", option=option, output=output)
            res[option]["out"] = torch.load(output, weights_only=True)
        except subprocess.CalledProcessError as err:
            res[option] = {"error": (err.stderr.strip().splitlines() or ["failed"])[-1][:80]}
        except subprocess.TimeoutExpired:
            res[option] = {"error": f"stopped after {args.option_timeout:.0f} s ({1 + args.repeats + 1} calls)"}
    base = res["fp32"]
    rows = []
    for option, r in res.items():
        if "error" in r:
            rows.append([option, "-", "-", "-", "-", r["error"]])
            continue
        rows.append([option, f"{args.images / r['seconds']:.3f}", f"{base['seconds'] / r['seconds']:.2f}x",
                     f"{r['first_call']:.1f}", f"{relative_difference(r['out'], base['out']):.1e}", ""])
    table(["option", "img/s", "speed-up vs fp32", "first call s", "max rel. difference to fp32", "note"], rows)


def end_to_end_section(args: argparse.Namespace) -> None:
    print(f"\n### difrep extract end to end vs the model alone (width {args.width}, {args.e2e_images} JPEGs of "
          f"500x375, batch {args.batch_size}, {args.workers} loader workers)\n")
    rows = []
    for name, spec in (("t=150, b=24, pool 2", {"timesteps": [150], "blocks": [24], "pool": 2}),
                       ("DifFormer set, pool 1", {**DIFFORMER, "pool": 1})):
        r = child(args, kind="end-to-end", spec=json.dumps(spec))
        rows.append([name, f"{r['model_only']:.3f}", f"{r['end_to_end']:.3f}",
                     f"{100 * r['end_to_end'] / r['model_only']:.0f}%"])
    table(["features", "model only img/s", "end to end img/s", "end to end / model"], rows)


def memory_section(args: argparse.Namespace) -> None:
    print(f"\n### Activation memory per input, measured (width {args.width}, {args.device})\n")
    budgets = (8, 16, 24, 80, 141)
    rows = []
    for name, spec in (("t=150, b=24", {"timesteps": [150], "blocks": [24]}), ("DifFormer set", DIFFORMER)):
        r = child(args, kind="memory", spec=json.dumps(spec))
        per, fixed = r["per_input"], r["fixed"]
        fits = [str(max((int(g * 2**30) - fixed) // per, 0)) for g in budgets]
        rows.append([name, f"{per / 2**20:.0f}", *fits, f"{r['chunk']} in {r['budget'] / 2**30:.1f} GiB",
                     f"{r['peak'] / 2**30:.2f} GiB"])
    table(["features", "MiB per input", *(f"fits {g} GiB" for g in budgets), "auto chunk",
           "measured peak at that chunk"], rows)
    print("\ninputs = images x timesteps; 24 GiB: this machine, 80: an A100/H100, 141: an H200")


def chunks_section(args: argparse.Namespace) -> None:
    from difrep import FeatureExtractor, create_model

    images = 512
    print(f"\n### Chunk size and speed: adm-fmnist-28, {images} images, t = 50, blocks 1-19, pool 2 "
          f"({args.device}, best of {args.repeats})\n")
    model = create_model("adm-fmnist-28").eval().to(args.device)
    batch = torch.rand(images, 3, 28, 28, device=args.device) * 2 - 1
    rows = []
    for chunk in (16, 64, 256, images, "auto"):
        ex = FeatureExtractor(model, [50], list(range(1, 20)), pool=2, chunk_size=chunk)
        seconds = best_seconds(lambda ex=ex: ex(batch, indices=list(range(images))), args.repeats, args.device)
        chosen = next(iter(ex.auto_chunks.values())) if chunk == "auto" else chunk
        rows.append([f"{chunk}" + (f" (chose {chosen})" if chunk == "auto" else ""), f"{images / seconds:.0f}"])
    table(["chunk_size", "images/s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=64, help="num_channels (256 is the real model)")
    parser.add_argument("--images", type=int, default=1, help="images per forward")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats")
    parser.add_argument("--sections", default="reference,options,end-to-end,memory,chunks")
    parser.add_argument("--batch-size", type=int, default=8, help="end-to-end batch size")
    parser.add_argument("--e2e-images", type=int, default=128, help="end-to-end: images in all")
    parser.add_argument("--workers", type=int, default=2, help="end-to-end loader workers")
    parser.add_argument("--budget-gib", type=float, default=2.0, help="memory section: the budget to check")
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"options to measure, from {', '.join(OPTIONS)}")
    parser.add_argument("--option-timeout", type=float, default=300, help="options: seconds before a variant "
                        "is stopped (fp16 convolutions are very slow on some CPUs)")
    for hidden in ("kind", "case", "path", "option", "spec", "output", "weights", "workdir"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.kind:
        cases = {"reference": reference_case, "option": option_case, "end-to-end": end_to_end_case,
                 "memory": memory_case}
        print(json.dumps(cases[args.kind](args)))
        return

    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        args.weights = Path(workdir) / "weights.pt"
        make_weights(args.width, args.weights)
        sections = {"reference": reference_section, "options": options_section, "end-to-end": end_to_end_section,
                    "memory": memory_section, "chunks": chunks_section}
        for name in args.sections.split(","):
            sections[name](args)


if __name__ == "__main__":
    main()
