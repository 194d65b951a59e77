"""``difrep extract``: write features of a data split to a feature cache (resumable, torchrun-aware)."""

from __future__ import annotations

import argparse

import torch

from ..distributed import barrier, init_distributed, sum_over_ranks
from ..errors import UserError
from ..features.cache import CacheWriter
from ..utils.precision import PRECISIONS
from .common import (
    add_data_args,
    add_model_args,
    block_list,
    build_dataset,
    build_model,
    int_list,
    model_description,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract features to an on-disk cache",
                       description="Run the U-Net once per image (all timesteps batched, stopping at the "
                       "deepest block) and cache every (t, b, pool) feature. Rerun to resume. Under "
                       "torchrun, each process takes its share of the shards.")
    add_model_args(p)
    add_data_args(p)
    add_extract_args(p)
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="cache folder")
    p.set_defaults(run=run, accepts_extra=True)


def add_extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timesteps", type=int_list, help="noise steps t, e.g. 90,150,300 (required for diffusion "
                   "backbones; backbones without a noise step take none and are keyed t=0)")
    p.add_argument("--blocks", type=block_list, required=True, help="blocks b, e.g. 19,24,30, or a backbone's "
                   "block names (dift:1; difrep info lists them)")
    p.add_argument("--pool", type=int_list, default=[1], help="adaptive pool sizes, 0 = full map (default 1)")
    p.add_argument("--noise-draws", type=int, default=1, help="average features over K noise draws")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch from the loader")
    p.add_argument("--chunk-size", type=chunk_size, default="auto", help="inputs (images x timesteps) per U-Net "
                   "forward: 'auto' (default) measures the memory one input takes and runs as many as fit "
                   "--memory-budget, at most a batch; or a number")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GIB", help="memory a forward may take "
                   "with --chunk-size auto, in GiB (default: 80%% of the device's free memory)")
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--storage", choices=["float16", "float32"], default="float16")
    p.add_argument("--dtype", choices=list(PRECISIONS), default="fp32", help="autocast precision of the U-Net")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (measure first: "
                   "benchmarks/extract.py)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (pays off on long GPU runs)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: one per core)")


def extract_split(args: argparse.Namespace, model: torch.nn.Module, model_info: dict, split: str, out: str,
                  rank: int = 0, world: int = 1, device: torch.device | str = "cpu", per_class: int | None = None) -> int:
    """``model_info`` is :func:`model_description` of ``model``, computed once by the caller (it hashes the weights).
    Returns how many images all processes extracted together (0 when the cache was already complete)."""
    data, data_description = build_dataset(args, split, model.image_size, per_class)
    writer = CacheWriter(
        out, model, args.timesteps, args.blocks, args.pool,
        description={"model": model_info, "data": data_description},
        seed=args.seed, num_noise_draws=args.noise_draws, shard_size=args.shard_size,
        storage_dtype=args.storage, chunk_size=args.chunk_size, dtype=PRECISIONS[args.dtype],
        memory_budget=None if args.memory_budget is None else int(args.memory_budget * 2**30),
        channels_last=args.channels_last, compile=args.compile,
    )
    if rank == 0:
        writer.prepare(len(data))
    barrier(world)
    shards = writer.run(data, args.batch_size, args.workers, rank, world, device)
    barrier(world)
    extracted = sum(len(range(s * args.shard_size, min(len(data), (s + 1) * args.shard_size))) for s in shards)
    return sum_over_ranks(extracted, world, device)


def chunk_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give 'auto' or a number of inputs >= 1")
    return number


def resolve_timesteps(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """``--timesteps`` is required for a diffusion backbone and defaults to [0] (the key) for others."""
    if args.timesteps is None:
        if model.takes_timestep:
            raise UserError(f"{args.model} is a diffusion backbone: pass --timesteps, e.g. 90,150")
        args.timesteps = [0]


def run(args: argparse.Namespace, extra: list[str]) -> int:
    rank, world, device = init_distributed()
    model = build_model(args, extra).to(device)
    resolve_timesteps(args, model)
    extract_split(args, model, model_description(args, model), args.split, args.out, rank, world, device)
    if rank == 0:
        print(f"cache complete: {args.out}")
    return 0
