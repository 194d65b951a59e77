"""``difrep pretrain``: an unconditional DDPM (ADM U-Net) trained on any image set difrep reads.

Every step is a pure function of (seed, step): the images of the step come from a permutation seeded
by (seed, epoch), and each image's flip, noise step t and noise from a generator seeded by (seed,
step, its position in the step's global batch). A run killed at any point and resumed from its last
checkpoint therefore continues exactly as one never interrupted, and w processes of batch B take the
same steps as one process of batch w x B: under torchrun each process takes its slice of the global
batch, DDP averages the gradients, and the logged losses are averaged over the processes.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import build_transform, load_split
from ..data.loader import StepBatches, build_loader, mix_seeds
from ..engine import Engine, EngineSettings, Task
from ..errors import UserError
from ..evaluation.plots import plot_loss_curve
from ..models import ADMUNet
from ..utils.files import atomic_write
from ..utils.precision import precision_dtype
from .config import PretrainConfig

LOG_FIELDS = ("step", "loss", "mse", "vb", "grad_norm", "lr", "images_per_s", "seconds")
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class EMA:
    """Exponential moving average of the weights, with the usual warm-up min(decay, (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema, live in zip(self.model.state_dict().values(), model.state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.lerp_(live.to(ema.dtype), 1 - decay)
            else:
                ema.copy_(live)


class DiffusionPretrainingTask(Task):
    """Unconditional DDPM training of an ADM U-Net: the pretraining task of the training engine.

    Periods are windows of ``run.log_every`` steps (one log row each); checkpoints every
    ``run.save_every`` steps and at every period's end."""

    position_name = "step"
    log_name = "loss"
    log_fields = LOG_FIELDS
    step_schedule = True

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        precision_dtype(cfg.run.precision, "run.precision")
        if cfg.run.export_dtype not in EXPORT_DTYPES:
            raise UserError(f"run.export_dtype={cfg.run.export_dtype!r}: use {', '.join(EXPORT_DTYPES)}")
        if cfg.optim.steps < 1 or cfg.optim.batch_size < 1 or cfg.run.log_every < 1 or cfg.run.save_every < 1:
            raise UserError("optim.steps, optim.batch_size, run.log_every and run.save_every must be positive")
        self.settings = EngineSettings(out=cfg.run.out, seed=cfg.run.seed, precision=cfg.run.precision,
                                       grad_clip=cfg.optim.grad_clip, progress=cfg.run.progress,
                                       tensorboard=cfg.run.tensorboard)
        self.num_periods = math.ceil(cfg.optim.steps / cfg.run.log_every)
        self.images_per_step = cfg.optim.batch_size * self.world
        torch.manual_seed(cfg.run.seed)
        self.model = cfg.model.build()
        if not isinstance(self.model, ADMUNet) or self.model.num_classes is not None:
            raise UserError(f"model {cfg.model.name!r}: difrep pretrain trains unconditional ADM U-Nets only")
        self.model.to(self.device).train()
        self.module = self.model
        self.diffusion = self.model.diffusion
        d = cfg.data
        # flips are drawn per image from the step's seeds, not by the transform, so that resuming is exact
        self.data, _ = load_split(d.name, d.root, d.split, build_transform(self.model.image_size, train=False),
                                  d.per_class, cfg.run.seed, check=d.check, on_error=d.on_error)  # type: ignore[arg-type]
        self.ema = EMA(self.model, cfg.optim.ema_decay)

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def resume_key(self, config: dict[str, Any]) -> dict[str, Any]:
        """Everything but the run options and ``optim.steps``, which may be raised to train on."""
        optim = {k: v for k, v in config["optim"].items() if k != "steps"}
        return {**{k: v for k, v in config.items() if k not in ("run", "optim")}, "optim": optim,
                "seed": config["run"]["seed"]}

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        o = self.cfg.optim
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)  # type: ignore[arg-type]

    def scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Linear warm-up over ``optim.warmup_steps``, then constant."""
        warm = self.cfg.optim.warmup_steps
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm) if warm else 1.0)

    def batches(self, period: int, first_step: int) -> Iterable[torch.Tensor]:
        o, d = self.cfg.optim, self.cfg.data
        stop = min((period + 1) * self.cfg.run.log_every, o.steps)
        steps = StepBatches(len(self.data), o.batch_size, self.cfg.run.seed, first_step, stop, self.rank, self.world)  # type: ignore[arg-type]
        loader = build_loader(self.data, o.batch_size, workers=d.workers, batch_sampler=steps)
        for step, batch in enumerate(loader, start=first_step):
            if batch is None:
                raise UserError(f"step {step}: every image of the batch was unreadable")
            yield batch[0]

    def loss(self, net: nn.Module, images: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The hybrid loss of this process's images; flips, t and noise drawn per image of the global batch."""
        images = self.model.encode(images)  # RGB images as the model reads them (grey for a 1-channel model)
        n = images.shape[0]
        flip, t, noise = torch.zeros(n, dtype=torch.bool), torch.empty(n, dtype=torch.long), torch.empty(images.shape)
        for i in range(n):
            gen = torch.Generator().manual_seed(mix_seeds(self.cfg.run.seed, step, self.rank * n + i, 7))
            flip[i] = bool(torch.rand((), generator=gen) < 0.5) and self.cfg.data.flip
            t[i] = int(torch.randint(0, self.diffusion.num_timesteps, (), generator=gen))
            noise[i] = torch.randn(images.shape[1:], generator=gen)
        x0 = torch.where(flip[:, None, None, None], images.flip(-1), images).to(self.device)
        terms = self.diffusion.training_losses(net, x0, t.to(self.device), noise.to(self.device))
        loss = terms["loss"].mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is {loss.item()}; lower optim.lr or use run.precision=fp32")
        return loss, {k: v.mean() for k, v in terms.items()}

    def after_step(self, step: int) -> None:
        self.ema.update(self.model, step)

    def checkpoint_now(self, step: int) -> bool:
        return step % self.cfg.run.save_every == 0

    def extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema.model.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema.model.load_state_dict(state["ema"])

    def export(self, path: Path) -> Path:
        """The EMA weights as safetensors, with the model's flags in the metadata."""
        from safetensors.torch import save_file

        dtype = EXPORT_DTYPES[self.cfg.run.export_dtype]
        state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in self.ema.model.state_dict().items()}
        meta = {"model": self.cfg.model.name, "flags": json.dumps(self.cfg.model.flags, sort_keys=True),
                "config": json.dumps(asdict(self.model.config), sort_keys=True)}
        atomic_write(path, lambda p: save_file(state, str(p), metadata=meta))
        return path

    def finish(self, out: Path, history: list[dict[str, Any]]) -> dict[str, Any]:
        weights = self.export(out / "ema.safetensors")
        plot_loss_curve(out / "loss.csv", out / "loss.png", f"{self.cfg.model.name} on {self.cfg.data.name}")
        summary = {"steps": self.cfg.optim.steps, "weights": str(weights),
                   "parameters": sum(p.numel() for p in self.model.parameters()), "config": self.cfg.to_dict()}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary



def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) a pretraining run; writes last.pt, loss.csv, ema.safetensors and summary.json."""
    return Engine(DiffusionPretrainingTask(cfg)).run()
