"""``difrep show``: PCA pictures of what block b encodes at noise step t, for a few image files."""

from __future__ import annotations

import argparse

import torch

from ..data import build_transform, load_rgb
from ..distributed import init_distributed
from ..features.pictures import write_feature_pictures
from .common import add_model_args, block_list, build_model, int_list
from .extract import resolve_timesteps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="draw PCA pictures of the features of a few images",
                       description="Noise each image to every --timesteps t (the fixed evaluation noise of its "
                       "index: the i-th --image is index i), project every block b's feature map on its first "
                       "three principal components (fitted on all the images' pixels) and draw them as RGB "
                       "beside x_t: one row per (image, t), one column per block.")
    add_model_args(p)
    p.add_argument("--image", action="append", required=True, metavar="PATH", help="an image file (repeat for more)")
    p.add_argument("--timesteps", type=int_list, help="noise steps t, e.g. 10,50 (required for diffusion backbones)")
    p.add_argument("--blocks", type=block_list, required=True, help="blocks b, e.g. 5,10,15 (difrep info lists them)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    _, _, device = init_distributed()
    model = build_model(args, extra).to(device)
    resolve_timesteps(args, model)
    transform = build_transform(model.image_size)
    channels = 1 if model.input_shape[0] == 1 else 3  # grey data is read as RGB: keep one channel
    images = torch.stack([transform(load_rgb(path))[:channels] for path in args.image]).to(device)
    path = write_feature_pictures(model, images, list(range(len(images))), args.timesteps, args.blocks, args.out,
                                  seed=args.seed, title=args.model)
    print(path)
    return 0
