"""The training engine: one loop for every task (head classification, DDPM pretraining, dense tasks).

A :class:`Task` supplies what is its own: the module it trains, the batches of a period (an epoch, or a
window of steps), the loss of one batch, its evaluation and what it exports. The engine owns the rest:
processes (DDP), seeding per (seed, period, rank), precision and the gradient scaler, gradient
accumulation and clipping, the optimiser's steps and the schedule, atomic checkpoints of the trainable
weights, exact resume with a config check, evaluation every few periods with every image counted once,
and logging (CSV, JSONL, TensorBoard, optional W&B, progress bars).

Every step is a pure function of (seed, step, the images' data-set positions): a run killed at any
point resumes to the weights of one never interrupted, and w processes of batch B take the steps of one
process of batch w x B.
"""

from __future__ import annotations

import csv
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .distributed import init_distributed
from .errors import MissingFileError, UserError
from .utils.files import atomic_write
from .utils.precision import autocast, precision_dtype


@dataclass
class EngineSettings:
    """The run options every task has (from its config's ``run`` and ``optim`` sections)."""

    out: str
    seed: int = 0
    precision: str = "fp32"
    grad_accum: int = 1
    grad_clip: float | None = None
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False


class Task(ABC):
    """What a task supplies to the :class:`Engine`. Subclasses set ``module`` (all it trains; frozen parts
    have ``requires_grad`` False), ``num_periods`` and ``settings`` in their constructor."""

    module: nn.Module
    num_periods: int
    settings: EngineSettings
    position_name = "epoch"  # how checkpoints and logs name the count of finished periods
    log_name = "metrics"  # run.out/<log_name>.csv and .jsonl
    log_fields: tuple[str, ...] = ("epoch", "loss", "lr", "seconds")
    step_schedule = False  # the schedule steps once per optimiser step (else once per period)
    images_per_step: int | None = None  # images of one optimiser step over all processes, for images/s

    def __init__(self) -> None:
        self.rank, self.world, self.device = init_distributed()

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The config as saved in checkpoints."""

    @abstractmethod
    def resume_key(self, config: dict[str, Any]) -> dict[str, Any]:
        """The part of a saved config that a resumed run must share with the checkpoint."""

    @abstractmethod
    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer: ...

    @abstractmethod
    def scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler: ...

    @abstractmethod
    def batches(self, period: int, first_step: int) -> Iterable[Any]:
        """This process's training batches of ``period``; ``first_step`` > the period's start when resuming
        inside it (a task whose periods are epochs never checkpoints inside one)."""

    @abstractmethod
    def loss(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise for one batch, and the terms to log (batch means)."""

    def begin_period(self, period: int) -> None:
        """Called before a period's batches, after the module is put in train mode."""

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (EMA, say)."""

    def evaluate_now(self, period: int) -> bool:
        return False

    def evaluate(self) -> dict[str, Any]:
        """Metrics over the whole evaluation split, each image once over every process."""
        return {}

    def checkpoint_now(self, step: int) -> bool:
        """Also checkpoint after this optimiser step (besides every period's end)."""
        return False

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_trainable_state(self, weights: dict[str, torch.Tensor], source: Path) -> None:
        """Load :meth:`trainable_state` back; anything else missing or unexpected is an error naming ``source``."""
        missing, unexpected = self.module.load_state_dict(weights, strict=False)
        expected = set(self.trainable_state())
        bad = sorted(k for k in missing if k in expected) + sorted(unexpected)
        if bad:
            raise UserError(f"{source} does not fit the model and head of its config: {bad[:5]}")

    def extra_state(self) -> dict[str, Any]:
        """More to save in checkpoints (an EMA copy, say)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None: ...

    def finish(self, out: Path, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Rank 0, once training is over: exports, and the summary returned by :meth:`Engine.run`."""
        return history[-1] if history else {}


def load_run_state(path: str | Path) -> dict[str, Any]:
    """A run's ``last.pt``, read to the CPU as weights only (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path}: no such file")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path, overrides: dict[str, Any] | None = None, state: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's ``last.pt`` and its saved config with ``section.option`` overrides applied. ``state``: what
    :func:`load_run_state` read from ``path`` already, so that a large checkpoint is not read twice."""
    state = load_run_state(path) if state is None else state
    config = state["config"]
    for key, value in (overrides or {}).items():
        section, option = key.split(".", 1)
        config[section][option] = value
    return state, config


class Engine:
    """Runs a :class:`Task` to the end, resuming from ``out/last.pt`` when it exists."""

    def __init__(self, task: Task) -> None:
        self.task = task
        s = task.settings
        self.amp_dtype = precision_dtype(s.precision, "run.precision")
        if s.grad_accum < 1:
            raise UserError(f"optim.grad_accum={s.grad_accum}: use 1 or more")
        self.out = Path(s.out)
        self.params = [p for p in task.module.parameters() if p.requires_grad]
        self.net: nn.Module = DistributedDataParallel(task.module) if task.world > 1 else task.module
        self.opt = task.optimizer(self.params)
        self.sched = task.scheduler(self.opt)
        self.scaler = torch.amp.GradScaler(task.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.period = 0
        self.step_lr: float | None = None  # the lr of the last optimiser step taken (the first group's)
        self.history: list[dict[str, Any]] = []

    # checkpoints ---------------------------------------------------------------------------------------
    def checkpoint(self) -> Path:
        t = self.task
        path = self.out / "last.pt"
        state = {t.position_name: self._position(), "period": self.period, "step": self.step, "config": t.config(),
                 "weights": t.trainable_state(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                 "history": self.history, **t.extra_state()}
        atomic_write(path, lambda p: torch.save(state, p))
        return path

    def resume(self) -> int:
        """Load ``out/last.pt`` if there is one; returns the number of finished periods."""
        path = self.out / "last.pt"
        if not path.exists():
            return 0
        state = torch.load(path, map_location=self.task.device, weights_only=True)
        if self.task.resume_key(state["config"]) != self.task.resume_key(self.task.config()):
            raise UserError(f"{path} was made with another config: choose another run.out or delete it")
        self.task.load_trainable_state(state["weights"], path)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.task.load_extra_state(state)
        self.period, self.step, self.history = state["period"], state["step"], state["history"]
        return self.period

    def _position(self) -> int:
        """Finished periods, or finished steps for a task that counts in steps."""
        return self.step if self.task.position_name == "step" else self.period

    # the loop ------------------------------------------------------------------------------------------
    def _optimizer_step(self) -> torch.Tensor | None:
        clip = self.task.settings.grad_clip
        norm = None
        if clip is not None:
            self.scaler.unscale_(self.opt)
            norm = nn.utils.clip_grad_norm_(self.params, clip or math.inf)
        self.step_lr = self.opt.param_groups[0]["lr"]
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        if self.task.step_schedule:
            self.sched.step()
        self.task.after_step(self.step)
        self.step += 1
        return norm

    def _step_and_record(self, terms: dict[str, torch.Tensor], bar: tqdm) -> dict[str, torch.Tensor]:
        norm = self._optimizer_step()
        bar.update(1)
        if self.task.checkpoint_now(self.step) and self.task.rank == 0:
            self.checkpoint()
        return terms if norm is None else {**terms, "grad_norm": norm}

    def _train_period(self, period: int, bar: tqdm) -> dict[str, float]:
        t, s = self.task, self.task.settings
        torch.manual_seed((s.seed * 1_000_003 + period) * 4099 + t.rank)
        t.module.train()
        t.begin_period(period)
        sums: dict[str, torch.Tensor] = {}
        count, accum = 0, s.grad_accum
        self.opt.zero_grad(set_to_none=True)
        pending = 0  # backward passes since the last optimiser step
        for batch in t.batches(period, self.step):
            if batch is None:
                continue
            with autocast(t.device, self.amp_dtype):
                loss, terms = t.loss(self.net, batch, self.step)
            self.scaler.scale(loss / accum).backward()
            pending += 1
            if pending == accum:
                terms = self._step_and_record(terms, bar)
                pending = 0
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            count += 1
            if count % 25 == 1:  # reading the loss waits for the device: not at every batch
                bar.set_postfix(loss=f"{float(sums['loss']) / count:.4f}", lr=f"{self._logged_lr():.2e}")
        if pending:  # the period's last, shorter accumulation
            self._step_and_record({}, bar)
        if not count and not t.step_schedule:  # step-scheduled tasks may resume at a period's very end
            raise UserError(f"{t.position_name} {period}: not one training batch (training batches are full: is the data "
                            "smaller than one batch? lower the batch size)")
        if not t.step_schedule:
            self.sched.step()
        return self._mean_over_processes(sums, count)

    def _logged_lr(self) -> float:
        """The lr of the period's last optimiser step, what a per-step schedule (warm-up, decay) reached rather than
        its first step's; before any step (a run resumed at a period's very end), the next step's."""
        return self.opt.param_groups[0]["lr"] if self.step_lr is None else self.step_lr

    def _mean_over_processes(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """The period's batch means over every process, not rank 0's share alone (every rank calls it)."""
        keys = sorted(sums)
        totals = torch.tensor([float(sums[k]) for k in keys] + [float(count)], dtype=torch.float64,
                              device=self.task.device)
        if self.task.world > 1:
            dist.all_reduce(totals)
        return {k: (totals[i] / totals[-1].clamp_min(1)).item() for i, k in enumerate(keys)}

    def run(self) -> dict[str, Any]:
        """Train (or resume) to the end; returns the task's summary (rank 0) or the last row."""
        t = self.task
        self.out.mkdir(parents=True, exist_ok=True)
        start = self.resume()
        logger = RunLogger(self.out, t, enabled=t.rank == 0, history=self.history)
        bar = tqdm(desc="train", unit="step", initial=self.step, disable=not (t.settings.progress and t.rank == 0))
        for period in range(start, t.num_periods):
            began, first_step, self.step_lr = time.perf_counter(), self.step, None
            terms = self._train_period(period, bar)
            self.period = period + 1
            row: dict[str, Any] = {t.position_name: self._position(), **terms, "lr": self._logged_lr()}
            if t.evaluate_now(period):
                row.update(t.evaluate())
            seconds = time.perf_counter() - began
            row["seconds"] = seconds
            if t.images_per_step:
                row["images_per_s"] = (self.step - first_step) * t.images_per_step / max(seconds, 1e-9)
            self.history.append(row)
            logger.log(row)
            if t.rank == 0:
                self.checkpoint()
                shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "lr")
                print(f"{t.position_name} {row[t.position_name]}: {shown}", flush=True)
        bar.close()
        logger.close()
        return t.finish(self.out, self.history) if t.rank == 0 else (self.history[-1] if self.history else {})


class RunLogger:
    """One row per period to ``<log_name>.jsonl`` and ``.csv`` (the task's fields), TensorBoard and W&B."""

    def __init__(self, out: Path, task: Task, enabled: bool, history: list[dict[str, Any]]) -> None:
        self.out, self.task, self.enabled = out, task, enabled
        self.writers: list[Any] = []
        if not enabled:
            return
        self._restart_files(history)
        s = task.settings
        if s.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writers.append(SummaryWriter(str(out / "tensorboard")))
            except ImportError:
                print("tensorboard is not installed: metrics go to the CSV and JSONL logs only")
        if s.wandb:
            self.writers.append(_WandbWriter(out, task.config()))

    def _restart_files(self, history: list[dict[str, Any]]) -> None:
        """The CSV and JSONL logs hold exactly the resumed history: rows a run logged after its last checkpoint,
        or those of a run started again without its ``last.pt``, would otherwise appear twice."""
        for suffix in (".jsonl", ".csv"):
            (self.out / f"{self.task.log_name}{suffix}").unlink(missing_ok=True)
        for row in history:
            self._write_files(row)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._write_files(row)
        position = row[self.task.position_name]
        for w in self.writers:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != self.task.position_name:
                    w.add_scalar(k, v, position)

    def _write_files(self, row: dict[str, Any]) -> None:
        name = self.task.log_name
        with open(self.out / f"{name}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        path = self.out / f"{name}.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.task.log_fields), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def close(self) -> None:
        for w in self.writers:
            w.close()


class _WandbWriter:
    """Weights & Biases, when run.wandb is set (off by default; WANDB_MODE=offline works without a network)."""

    def __init__(self, out: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as err:
            raise UserError("run.wandb=true needs the wandb package: pip install wandb") from err
        self.run = wandb.init(project="difrep", name=out.name, config=config, dir=str(out))

    def add_scalar(self, name: str, value: float, step: int) -> None:
        self.run.log({name: value}, step=step)

    def close(self) -> None:
        self.run.finish()
