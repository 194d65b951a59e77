"""Pretraining: deterministic step batches, EMA, exact resume, export, and that the loss goes down."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from fakes import make_fashion_mnist
from safetensors import safe_open

from difrep.models import create_model
from difrep.pretraining import EMA, PretrainConfig, StepBatches, pretrain
from difrep.training import load_config

TINY = {"image_size": 28, "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1,
        "attention_resolutions": "14", "num_head_channels": 16, "learn_sigma": True}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    make_fashion_mnist(root, n=40, prefixes=("train", "t10k"))
    return root


def _cfg(root, out, **extra) -> PretrainConfig:
    base = {"model.flags": json.dumps(TINY), "data.root": str(root), "data.check": "false", "data.workers": 0,
            "optim.batch_size": 4, "optim.steps": 6, "optim.lr": 1e-3, "run.out": str(out), "run.log_every": 2,
            "run.save_every": 3, "run.progress": "false"}
    base.update(extra)
    return load_config(None, [f"{k}={v}" for k, v in base.items()], schema=PretrainConfig)


def _log(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_step_batches_are_epoch_permutations_split_between_ranks():
    one = list(StepBatches(10, 2, seed=0, start=0, stop=10))
    assert sorted(i for b in one[:5] for i in b) == list(range(10))
    assert sorted(i for b in one[5:] for i in b) == list(range(10))
    assert one[:5] != one[5:]
    tail = list(StepBatches(10, 2, seed=0, start=3, stop=10))
    assert tail == one[3:]
    ranks = [list(StepBatches(10, 1, seed=0, start=0, stop=5, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == one[:5]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatches(3, 2, seed=0, start=0, stop=1, world=2)


def test_ema_follows_the_warmed_up_decay():
    live = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        live.weight.fill_(0.0)
    ema = EMA(live, decay=0.9)
    with torch.no_grad():
        live.weight.fill_(1.0)
    ema.update(live, step=0)  # decay min(0.9, 1/10) = 0.1
    assert ema.model.weight.item() == pytest.approx(0.9)
    ema.update(live, step=100)  # decay 0.9
    assert ema.model.weight.item() == pytest.approx(0.9 + 0.1 * 0.1)


def test_a_run_writes_its_log_and_exports_loadable_ema_weights(fake, tmp_path):
    summary = pretrain(_cfg(fake, tmp_path))
    rows = _log(tmp_path / "loss.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert all(float(r["loss"]) > float(r["mse"]) > 0 and float(r["vb"]) > 0 for r in rows)
    weights = tmp_path / "ema.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert json.loads(f.metadata()["flags"])["num_channels"] == 32
    model = create_model("adm", checkpoint=weights, **TINY)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state["ema"][k])
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())


def test_a_killed_run_resumes_to_the_same_weights(fake, tmp_path):
    pretrain(_cfg(fake, tmp_path / "straight"))
    pretrain(_cfg(fake, tmp_path / "resumed", **{"optim.steps": 3}))
    pretrain(_cfg(fake, tmp_path / "resumed"))
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for part in ("weights", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="made with another config"):
        pretrain(_cfg(fake, tmp_path / "resumed", **{"optim.lr": 1e-4}))


def test_the_loss_goes_down(fake, tmp_path):
    pretrain(_cfg(fake, tmp_path, **{"optim.steps": 40, "run.log_every": 10, "run.save_every": 40,
                                     "optim.lr": 2e-3}))
    mse = [float(r["mse"]) for r in _log(tmp_path / "loss.csv")]
    assert mse[-1] < 0.6 * mse[0], mse


def test_conditional_models_and_bad_options_are_refused(fake, tmp_path):
    with pytest.raises(ValueError, match="unconditional ADM U-Nets only"):
        pretrain(_cfg(fake, tmp_path, **{"model.flags": json.dumps({**TINY, "class_cond": True})}))
    with pytest.raises(ValueError, match="unknown option"):
        _cfg(fake, tmp_path, **{"optim.learning_rate": 1})
    with pytest.raises(ValueError, match="run.precision"):
        pretrain(_cfg(fake, tmp_path, **{"run.precision": "fp8"}))


def test_a_config_keeps_the_defaults_of_its_sections():
    cfg = load_config(None, ["optim.lr=0.001"], schema=PretrainConfig)
    assert cfg.model.name == "adm" and cfg.data.name == "fashion-mnist" and cfg.optim.lr == 0.001


def test_two_processes_take_the_steps_of_one(fake, tmp_path):
    """2 processes of batch 2 = 1 process of batch 4: same global batches, flips, t and noise per image."""
    import subprocess
    import sys

    one = _cfg(fake, tmp_path / "one", **{"optim.steps": 4, "optim.batch_size": 4, "run.save_every": 4})
    pretrain(one)
    args = [f"model.flags={json.dumps(TINY)}", f"data.root={fake}", "data.check=false", "data.workers=0",
            "optim.batch_size=2", "optim.steps=4", "optim.lr=0.001", f"run.out={tmp_path / 'two'}", "run.log_every=2",
            "run.save_every=4", "run.progress=false"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "difrep.cli.main", "pretrain", *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows_one, rows_two = _log(tmp_path / "one" / "loss.csv"), _log(tmp_path / "two" / "loss.csv")
    assert [int(r["step"]) for r in rows_two] == [2, 4], "only rank 0 logs"
    for a, b in zip(rows_one, rows_two):
        assert float(a["mse"]) == pytest.approx(float(b["mse"]), rel=1e-4), "logged losses cover both processes"
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True)["weights"] for n in ("one", "two"))
    torch.manual_seed(one.run.seed)
    init = create_model("adm", **TINY).state_dict()
    keys = [k for k in a if a[k].is_floating_point()]
    step = torch.cat([(a[k] - init[k]).flatten() for k in keys]).norm()
    gap = torch.cat([(b[k] - a[k]).flatten() for k in keys]).norm()
    # AdamW turns the round-off of batch 2 vs 4 on near-zero gradients into updates of up to lr, so the bound
    # is on the whole weight vector; another batch, noise or gradient average moves it by about the step
    assert step > 0.01 and gap < 0.02 * step, f"2 processes differ by {gap:.2e}, the 4 steps moved {step:.2e}"
    create_model("adm", checkpoint=tmp_path / "two" / "ema.safetensors", **TINY)


def test_a_one_channel_model_trains_on_the_grey_level_of_rgb_stored_images(fake, tmp_path):
    from difrep.pretraining.trainer import DiffusionPretrainingTask

    task = DiffusionPretrainingTask(_cfg(fake, tmp_path, **{"model.flags": json.dumps({**TINY, "in_channels": 1})}))
    grey = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rgb = grey.expand(-1, 3, -1, -1)
    loss_rgb, terms_rgb = task.loss(task.model, rgb, step=5)
    loss_grey, terms_grey = task.loss(task.model, grey, step=5)
    assert loss_rgb.item() == pytest.approx(loss_grey.item(), rel=1e-5)
    assert terms_rgb["mse"].item() == pytest.approx(terms_grey["mse"].item(), rel=1e-5)
    summary = pretrain(_cfg(fake, tmp_path, **{"model.flags": json.dumps({**TINY, "in_channels": 1})}))
    model = create_model("adm", checkpoint=summary["weights"], **{**TINY, "in_channels": 1})
    assert model.out[-1].out_channels == 2 and model.input_shape == (1, 28, 28)
