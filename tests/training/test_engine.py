"""The engine's own bookkeeping, on a task small enough to follow by hand."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import torch
from torch import nn

from difrep.engine import Engine, EngineSettings, Task

STEPS_PER_PERIOD = 3


class _LineTask(Task):
    """Fits y = 2x with one weight; each period is STEPS_PER_PERIOD steps of one batch, and the lr of step k is
    lr x (k + 1) when scheduled per step, or lr x 0.5^period when scheduled per period."""

    def __init__(self, out: str, device: torch.device, step_schedule: bool, grad_accum: int = 1) -> None:
        super().__init__()
        self.device = device
        self.step_schedule = step_schedule
        self.position_name = "step" if step_schedule else "epoch"
        self.grad_accum = grad_accum
        self.module = nn.Linear(1, 1, bias=False).to(device)
        self.num_periods = 3
        self.settings = EngineSettings(out=out, progress=False, grad_accum=grad_accum)
        self.used: list[float] = []  # the lr of every optimiser step, read when the step is taken

    def config(self) -> dict[str, Any]:
        return {"step_schedule": self.step_schedule}

    def resume_key(self, config: dict[str, Any]) -> dict[str, Any]:
        return config

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        opt = torch.optim.SGD(params, lr=0.01)
        opt.register_step_pre_hook(lambda o, args, kwargs: self.used.append(o.param_groups[0]["lr"]))
        return opt

    def scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if self.step_schedule:
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: step + 1.0)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def batches(self, period: int, first_step: int) -> Iterable[torch.Tensor]:
        return [torch.full((4, 1), float(i + 1)) for i in range(STEPS_PER_PERIOD * self.grad_accum)]

    def loss(self, net: nn.Module, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch.to(self.device)
        loss = ((net(x) - 2 * x) ** 2).mean()
        return loss, {"loss": loss}


@pytest.mark.parametrize("step_schedule", [True, False], ids=["per step", "per period"])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_each_row_logs_the_lr_its_last_step_used(device, tmp_path, step_schedule, grad_accum):
    """Not the lr at the period's start: under a per-step schedule (warm-up, decay) that is the first step's."""
    task = _LineTask(str(tmp_path), device, step_schedule, grad_accum)
    engine = Engine(task)
    engine.run()
    assert len(task.used) == task.num_periods * STEPS_PER_PERIOD
    last_of_each = task.used[STEPS_PER_PERIOD - 1 :: STEPS_PER_PERIOD]
    assert [row["lr"] for row in engine.history] == pytest.approx(last_of_each)
    if step_schedule:
        assert last_of_each == pytest.approx([0.03, 0.06, 0.09])
    else:
        assert last_of_each == pytest.approx([0.01, 0.005, 0.0025]), "one lr for every step of a period"
