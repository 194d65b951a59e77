"""What the dense tasks share on the engine: a backbone under a trainable network, batches of seeded steps,
AdamW with the backbone in its own group, checkpoints without a frozen backbone, evaluation every few steps."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.loader import StepBatches, default_workers, mix_seeds
from ..engine import Task
from ..models import Backbone


class SeededSteps(Sampler[list[tuple[int, int]]]):
    """:class:`StepBatches` whose items carry their augmentation seed: (index, seed of (run seed, step, position))."""

    def __init__(self, steps: StepBatches, seed: int) -> None:
        self.steps, self.seed = steps, seed

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.steps
        for step, batch in enumerate(s, start=s.start):
            first = s.rank * s.batch
            yield [(i, mix_seeds(self.seed, step, first + k, 3)) for k, i in enumerate(batch)]


def trainable_weights(state: dict[str, torch.Tensor], prefix: str, backbone: Backbone, finetune: bool
                      ) -> dict[str, torch.Tensor]:
    """``state`` without the backbone's tensors (under ``prefix``) unless it is fine-tuned, keeping what the
    backbone trains with a head (Stable Diffusion's learnable text, say)."""
    if finetune:
        return state
    with_head = {prefix + n for n, p in backbone.named_parameters() if any(p is q for q in backbone.trainable_with_head())}
    return {k: v for k, v in state.items() if not k.startswith(prefix) or k in with_head}


class DenseTask(Task):
    """A task counted in optimiser steps that trains ``net`` around the backbone ``model`` (frozen unless
    ``run.finetune``). Subclasses set ``cfg`` (with ``optim``, ``run`` and ``data`` sections), ``model``,
    ``net``, ``train_data`` and ``iterations``, and say where the backbone sits in ``net``'s state."""

    position_name = "step"
    log_name = "metrics"
    step_schedule = True
    backbone_prefix = ""  # the backbone's key prefix in net.state_dict()
    schedule_options: tuple[str, ...] = ("iterations",)  # optim options a resumed run may change, to extend it
    collate: Callable[[list[Any]], Any] | None = None
    cfg: Any
    model: Backbone
    net: nn.Module
    train_data: Dataset
    iterations: int

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def resume_key(self, config: dict[str, Any]) -> dict[str, Any]:
        optim = {k: v for k, v in config["optim"].items() if k not in self.schedule_options}
        return {**{k: v for k, v in config.items() if k not in ("run", "optim")}, "optim": optim,
                "seed": config["run"]["seed"], "finetune": config["run"]["finetune"]}

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        o = self.cfg.optim
        backbone = {id(p) for p in self.model.parameters()}
        groups = [{"params": [p for p in params if id(p) not in backbone], "lr": o.lr}]
        tuned = [p for p in params if id(p) in backbone]
        if tuned:
            groups.append({"params": tuned, "lr": o.backbone_lr if o.backbone_lr is not None else o.lr})
        return torch.optim.AdamW(groups, betas=tuple(o.betas), weight_decay=o.weight_decay)  # type: ignore[arg-type]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The head, plus the backbone when fine-tuning (or what it trains with a head); a frozen backbone is
        rebuilt from model.name / checkpoint, never saved."""
        return trainable_weights(self.net.state_dict(), self.backbone_prefix, self.model, self.cfg.run.finetune)

    def trained_parameters(self) -> int:
        """How many parameters the run trains: those of :meth:`trainable_state` (buffers such as BatchNorm
        statistics are not counted)."""
        kept = self.trainable_state().keys()
        return sum(p.numel() for n, p in self.net.named_parameters() if n in kept)

    def batches(self, period: int, first_step: int) -> Iterable[Any]:
        r = self.cfg.run
        stop = min((period + 1) * r.log_every, self.iterations)
        steps = StepBatches(len(self.train_data), self.cfg.optim.batch_size, r.seed, first_step, stop, self.rank,
                            self.world)
        workers = default_workers() if self.cfg.data.workers is None else self.cfg.data.workers
        return DataLoader(self.train_data, batch_sampler=SeededSteps(steps, r.seed), num_workers=workers,
                          collate_fn=self.collate, pin_memory=torch.cuda.is_available())

    def begin_period(self, period: int) -> None:
        if not self.cfg.run.finetune:
            self.model.eval()  # a frozen backbone keeps its eval behaviour (BatchNorm statistics, dropout)

    def evaluate_now(self, period: int) -> bool:
        r = self.cfg.run
        end = min((period + 1) * r.log_every, self.iterations)
        return end == self.iterations or end // r.eval_every > (end - r.log_every) // r.eval_every
