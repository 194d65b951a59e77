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
import csv
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ..data import build_transform, collate_skipping, load_split
from ..distributed import init_distributed
from ..errors import UserError
from ..evaluation.plots import plot_loss_curve
from ..utils.files import atomic_write
from ..utils.precision import autocast, precision_dtype
from .config import PretrainConfig

EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _mix(*values: int) -> int:
    seed = 0
    for v in values:
        seed = (seed * 1_000_003 + v) % (2**63 - 1)
    return seed


class StepBatches(Sampler[list[int]]):
    """Batches of data-set indices for steps ``start, start + 1, ...``: each epoch is a permutation
    seeded by (seed, epoch); rank r of w takes its slice of every global batch."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                 world: int = 1) -> None:
        if size < batch_size * world:
            raise UserError(f"the data has {size} images, fewer than one global batch of {batch_size * world}")
        self.size, self.batch, self.seed, self.start, self.stop = size, batch_size, seed, start, stop
        self.rank, self.world = rank, world
        self.per_epoch = size // (batch_size * world)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start, self.stop):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))
            first = (step % self.per_epoch) * self.batch * self.world + self.rank * self.batch
            yield order[first : first + self.batch].tolist()


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


class Pretrainer:
    """Everything a pretraining run needs, built and checked before the first step."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.rank, self.world, self.device = init_distributed()
        self.amp_dtype = precision_dtype(cfg.run.precision, "run.precision")
        if cfg.run.export_dtype not in EXPORT_DTYPES:
            raise UserError(f"run.export_dtype={cfg.run.export_dtype!r}: use {', '.join(EXPORT_DTYPES)}")
        if cfg.optim.steps < 1 or cfg.optim.batch_size < 1:
            raise UserError("optim.steps and optim.batch_size must be positive")
        torch.manual_seed(cfg.run.seed)
        self.model = cfg.model.build()
        if getattr(self.model, "num_classes", None) is not None or not hasattr(self.model, "output_blocks"):
            raise UserError(f"model {cfg.model.name!r}: difrep pretrain trains unconditional U-Nets only")
        self.model.to(self.device).train()
        self.diffusion = self.model.diffusion
        d = cfg.data
        # flips are drawn from the step's generator, not by the transform, so that resuming is exact
        self.data, _ = load_split(d.name, d.root, d.split, build_transform(self.model.image_size, train=False),
                                  d.per_class, cfg.run.seed, check=d.check, on_error=d.on_error)  # type: ignore[arg-type]
        self.ema = EMA(self.model, cfg.optim.ema_decay)
        self.net: nn.Module = DistributedDataParallel(self.model) if self.world > 1 else self.model
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),  # type: ignore[arg-type]
                                     weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.out = Path(cfg.run.out)

    def lr_at(self, step: int) -> float:
        warm = self.cfg.optim.warmup_steps
        return self.cfg.optim.lr * min(1.0, (step + 1) / warm) if warm else self.cfg.optim.lr

    def loader(self, start: int) -> DataLoader:
        o, d = self.cfg.optim, self.cfg.data
        batches = StepBatches(len(self.data), o.batch_size, self.cfg.run.seed, start, o.steps, self.rank, self.world)  # type: ignore[arg-type]
        return DataLoader(self.data, batch_sampler=batches, num_workers=d.workers, collate_fn=collate_skipping,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)

    def step(self, step: int, images: torch.Tensor) -> dict[str, float]:
        """One optimisation step on this process's images; returns the batch means of the loss terms."""
        n = images.shape[0]
        flip, t, noise = torch.zeros(n, dtype=torch.bool), torch.empty(n, dtype=torch.long), torch.empty(images.shape)
        for i in range(n):
            gen = torch.Generator().manual_seed(_mix(self.cfg.run.seed, step, self.rank * n + i, 7))
            flip[i] = bool(torch.rand((), generator=gen) < 0.5) and self.cfg.data.flip
            t[i] = int(torch.randint(0, self.diffusion.num_timesteps, (), generator=gen))
            noise[i] = torch.randn(images.shape[1:], generator=gen)
        x0 = torch.where(flip[:, None, None, None], images.flip(-1), images).to(self.device)
        t, noise = t.to(self.device), noise.to(self.device)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        with autocast(self.device, self.amp_dtype):
            terms = self.diffusion.training_losses(self.net, x0, t, noise)
        loss = terms["loss"].mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is {loss.item()}; lower optim.lr or use run.precision=fp32")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip or math.inf)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.ema.update(self.model, step)
        return {k: v.mean().item() for k, v in terms.items()} | {"grad_norm": float(grad_norm)}

    def mean_over_processes(self, values: dict[str, float]) -> dict[str, float]:
        """Logged means over every process's images, not rank 0's share alone (every rank must call it)."""
        if self.world == 1:
            return values
        stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(stacked)
        return dict(zip(values, (stacked / self.world).tolist()))

    def checkpoint(self, step: int) -> Path:
        path = self.out / "last.pt"
        state = {"step": step, "config": self.cfg.to_dict(), "model": self.model.state_dict(),
                 "ema": self.ema.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scaler": self.scaler.state_dict()}
        atomic_write(path, lambda p: torch.save(state, p))
        return path

    def resume(self) -> int:
        path = self.out / "last.pt"
        if not path.exists():
            return 0
        state = torch.load(path, map_location=self.device, weights_only=True)
        saved = {k: v for k, v in state["config"].items() if k != "run"}
        now = {k: v for k, v in self.cfg.to_dict().items() if k != "run"}
        saved["optim"].pop("steps"), now["optim"].pop("steps")
        if saved != now or state["config"]["run"]["seed"] != self.cfg.run.seed:
            raise UserError(f"{path} was made with another config: choose another run.out or delete it")
        self.model.load_state_dict(state["model"])
        self.ema.model.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        return int(state["step"])

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


LOG_FIELDS = ["step", "loss", "mse", "vb", "grad_norm", "lr", "images_per_s", "seconds"]


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) a pretraining run; writes last.pt, loss.csv, ema.safetensors and summary.json."""
    trainer = Pretrainer(cfg)
    trainer.out.mkdir(parents=True, exist_ok=True)
    start = trainer.resume()
    main = trainer.rank == 0
    log_path = trainer.out / "loss.csv"
    if main and start == 0 and log_path.exists():
        log_path.unlink()
    writer = None
    if main and cfg.run.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(trainer.out / "tensorboard"))
    began = time.perf_counter()
    window: list[dict[str, float]] = []
    window_start, seen = time.perf_counter(), 0
    bar = tqdm(total=cfg.optim.steps, initial=start, desc="pretrain", unit="step", disable=not (cfg.run.progress and main))
    for step, batch in enumerate(trainer.loader(start), start=start):
        if batch is None:
            raise UserError(f"step {step}: every image of the batch was unreadable")
        images = batch[0]
        window.append(trainer.step(step, images))
        seen += images.shape[0] * trainer.world
        bar.update(1)
        done = step + 1
        if done % cfg.run.log_every == 0 or done == cfg.optim.steps:
            elapsed = time.perf_counter() - window_start
            row: dict[str, Any] = trainer.mean_over_processes(
                {k: sum(w[k] for w in window) / len(window) for k in window[0]})
            row.update(step=done, lr=trainer.lr_at(step), images_per_s=seen / elapsed,
                       seconds=time.perf_counter() - began)
            bar.set_postfix(loss=f"{row['loss']:.4f}", mse=f"{row['mse']:.4f}")
            if main:
                _append_log(log_path, row)
                if writer is not None:
                    for k in ("loss", "mse", "vb", "grad_norm"):
                        if k in row:
                            writer.add_scalar(f"train/{k}", row[k], done)
            window, window_start, seen = [], time.perf_counter(), 0
        if main and (done % cfg.run.save_every == 0 or done == cfg.optim.steps):
            trainer.checkpoint(done)
    bar.close()
    summary: dict[str, Any] = {}
    if main:
        weights = trainer.export(trainer.out / "ema.safetensors")
        plot_loss_curve(log_path, trainer.out / "loss.png", f"{cfg.model.name} on {cfg.data.name}")
        summary = {"steps": cfg.optim.steps, "resumed_from": start, "seconds_this_run": time.perf_counter() - began,
                   "weights": str(weights), "parameters": sum(p.numel() for p in trainer.model.parameters()),
                   "config": cfg.to_dict()}
        (trainer.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if writer is not None:
        writer.close()
    return summary

