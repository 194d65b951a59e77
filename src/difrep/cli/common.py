"""Options shared by the commands: which model, which data, which processes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data import CATALOG, build_transform, load_split
from ..models import create_model
from ..utils.files import weights_sha256
from .overrides import parse_model_flags


def block_list(text: str) -> list[int | str]:
    """Block numbers, or a backbone's block names (``dift:1``), comma-separated."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} names no block")
    return [int(v) if v.lstrip("-").isdigit() else v for v in items]


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="adm-256-uncond", help="ADM preset (difrep info lists them), timm:NAME, "
                   "diffusers:FOLDER or sd:FOLDER; extra --flag value pairs override guided-diffusion flags "
                   "(or set the family's options)")
    p.add_argument("--checkpoint", help=".pt or .safetensors weights of an ADM preset or a timm model "
                   "(default: random initialisation)")
    p.add_argument("--pretrained", action="store_true", help="load the weights difrep ships for --model "
                   "(adm-fmnist-28)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (and of a random initialisation)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, choices=list(CATALOG), help="data set name")
    p.add_argument("--root", required=True, help="the data set's folder")
    p.add_argument("--class-list", help="imagenet-50: file of WordNet ids")
    p.add_argument("--per-class", type=int, help="keep a seeded, class-balanced subset of this many images a class")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="unreadable images: stop or skip (logged)")
    p.add_argument("--no-check", action="store_true", help="accept class and image counts that differ from the paper's")


def build_model(args: argparse.Namespace, extra: list[str]) -> torch.nn.Module:
    flags = parse_model_flags(args.model, extra)
    torch.manual_seed(args.seed)
    return create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, **flags)


def build_dataset(args: argparse.Namespace, split: str, image_size: int,
                  per_class: int | None = None) -> tuple[Dataset, dict[str, Any]]:
    """The split, cut to ``per_class`` images a class (default ``--per-class``)."""
    options = {"class_list": args.class_list} if args.class_list else {}
    transform = build_transform(image_size)
    per_class = args.per_class if per_class is None else per_class
    data, _ = load_split(args.data, args.root, split, transform, per_class, args.seed,
                         check=not args.no_check, on_error=args.on_error, **options)
    description = {
        "name": args.data, "root": str(Path(args.root).resolve()), "split": split, "options": options,
        "per_class": per_class, "transform": repr(transform),
    }
    return data, description


def model_description(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    return {"name": args.model, "config": model.describe(), "weights_sha256": weights_sha256(model),
            "init_seed": None if args.checkpoint or args.pretrained else args.seed}
