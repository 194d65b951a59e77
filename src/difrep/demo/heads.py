"""Brief, seeded training of heads for the demo: the same optimiser, schedule and data for every head.

Frozen-backbone heads (linear, Attention, DifFormer) train on features extracted once with the
per-image evaluation noise; DifFeed runs its two U-Net passes on the images with that same noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class HeadProtocol:
    """Adam (the paper text's optimiser) with a cosine schedule, cross-entropy, no augmentation."""

    epochs: int = 6
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.05


def fit_head(module: nn.Module, forward: Forward, labels: torch.Tensor, protocol: HeadProtocol, seed: int) -> None:
    """Train the trainable parameters of ``module``; ``forward(rows)`` gives the logits of training rows."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=protocol.lr, weight_decay=protocol.weight_decay)
    steps = protocol.epochs * -(-len(labels) // protocol.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(protocol.epochs):
        for rows in torch.randperm(len(labels), generator=gen).split(protocol.batch_size):
            loss = F.cross_entropy(forward(rows), labels[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    module.eval()


@torch.no_grad()
def top1(module: nn.Module, forward: Forward, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) of ``forward`` over all rows, in eval mode."""
    module.eval()
    rows = torch.arange(len(labels))
    pred = torch.cat([forward(r).argmax(dim=1) for r in rows.split(batch_size)])
    return 100.0 * (pred == labels).float().mean().item()
