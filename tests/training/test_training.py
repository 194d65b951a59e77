"""The training loop: learning on real data, resume equivalence, config checks, 1 vs 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from fakes import make_fashion_mnist

from difrep.data import DEBIAN_FASHION_MNIST
from difrep.training import Experiment, load_config, train

TINY = {"image_size": 32, "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1,
        "attention_resolutions": "16", "num_head_channels": 16}


def _overrides(root, out, **extra):
    base = {
        "model.name": "adm", "model.flags": json.dumps(TINY), "data.name": "fashion-mnist", "data.root": str(root),
        "data.check": "false", "data.workers": 0, "features.timesteps": "[100]", "features.blocks": "[4]",
        "head.name": "linear", "optim.batch_size": 16, "optim.epochs": 2, "optim.eval_every": 1, "optim.lr": 0.05,
        "run.out": str(out), "run.progress": "false", "run.tensorboard": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    make_fashion_mnist(root, n=40, prefixes=("train", "t10k"))
    return root


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_a_linear_head_learns_real_fashion_mnist(tmp_path):
    cfg = load_config(None, _overrides(DEBIAN_FASHION_MNIST, tmp_path, **{
        "data.per_class": 30, "optim.epochs": 3, "optim.eval_every": 3, "head.pool": 2, "optim.name": "adam",
        "optim.lr": 0.003, "features.timesteps": "[10]"}))
    metrics = train(cfg)
    assert metrics["images"] == 300
    assert metrics["top1"] > 30, f"chance is 10%, got {metrics['top1']:.1f}%"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["checkpoint_sha256"] and saved["config"]["head"]["name"] == "linear"
    assert saved["data"]["root"] == str(DEBIAN_FASHION_MNIST)


def test_a_killed_run_resumes_to_the_same_weights_and_metrics(fake, tmp_path, monkeypatch):
    extra = {"head.name": "attention", "head.dim": 32, "head.depth": 1, "head.num_heads": 4, "optim.epochs": 3}
    reference = train(load_config(None, _overrides(fake, tmp_path / "a", **extra)))
    original = Experiment.train_epoch

    def killed_in_epoch_2(self, epoch):
        if epoch == 1:
            self.opt.step()  # leave half-updated state behind, as a crash would
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Experiment, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, _overrides(fake, tmp_path / "b", **extra)))
    monkeypatch.setattr(Experiment, "train_epoch", original)
    resumed = train(load_config(None, _overrides(fake, tmp_path / "b", **extra)))
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["weights"].keys() == b["weights"].keys() and not any(k.startswith("model.") for k in a["weights"])
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in a["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in b["history"]]
    assert (reference["top1"], reference["top5"]) == (resumed["top1"], resumed["top5"])


def test_bad_configs_fail_before_training(fake, tmp_path):
    with pytest.raises(ValueError, match="head.name='vit' is unknown"):
        train(load_config(None, _overrides(fake, tmp_path, **{"head.name": "vit"})))
    with pytest.raises(ValueError, match=r"\[40\] do not exist"):
        train(load_config(None, _overrides(fake, tmp_path, **{"features.blocks": "[40]"})))
    with pytest.raises(ValueError, match="takes one noise step and one block"):
        train(load_config(None, _overrides(fake, tmp_path, **{"features.blocks": "[2,4]"})))
    torch.save({"nope": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="1 unexpected keys"):
        train(load_config(None, _overrides(fake, tmp_path, **{"model.checkpoint": str(tmp_path / "w.pt")})))
    with pytest.raises(ValueError, match="unknown option.*optim.learning_rate"):
        load_config(None, ["optim.learning_rate=1"])
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("head", ["mlp", "cnn", "difformer", "difeed"])
def test_every_head_trains(fake, tmp_path, head):
    extra = {"head.name": head, "head.dim": 32, "head.depth": 1, "head.num_heads": 4, "head.hidden": "[16]",
             "head.conv_channels": "[16,8]", "optim.epochs": 1}
    if head == "difformer":
        extra.update({"features.timesteps": "[50,150]", "features.blocks": "[3,4]"})
    metrics = train(load_config(None, _overrides(fake, tmp_path, **extra)))
    assert metrics["images"] == 40 and 0 <= metrics["top1"] <= 100


def test_evaluation_is_the_same_on_one_and_two_processes(fake, tmp_path):
    train(load_config(None, _overrides(fake, tmp_path / "run", **{"optim.epochs": 1})))
    ckpt = tmp_path / "run" / "last.pt"
    one = subprocess.run([sys.executable, "-m", "difrep.cli.main", "evaluate", str(ckpt), "--out", str(tmp_path / "1.json")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29544",
                          "-m", "difrep.cli.main", "evaluate", str(ckpt), "--out", str(tmp_path / "2.json")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-2000:]
    r1, r2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in (1, 2))
    assert r1["images"] == r2["images"] == 40
    assert (r1["top1"], r1["top5"]) == (r2["top1"], r2["top5"])


def test_finetuning_bf16_cosine_and_tensorboard(fake, tmp_path):
    cfg = load_config(None, _overrides(fake, tmp_path, **{
        "run.finetune": "true", "run.precision": "bf16", "optim.schedule": "cosine", "optim.epochs": 2,
        "optim.grad_accum": 2, "run.tensorboard": "true", "optim.lr": 0.01}))
    before = {k: v.clone() for k, v in Experiment(cfg).model.state_dict().items()}
    train(cfg)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    tuned = {k[len("model."):]: v for k, v in state["weights"].items() if k.startswith("model.")}
    assert tuned.keys() == before.keys(), "a fine-tuned run saves the U-Net too"
    assert any(not torch.equal(tuned[k], before[k]) for k in before), "fine-tuning changes the U-Net"
    lrs = [row["lr"] for row in state["history"]]
    assert lrs == [0.01, pytest.approx(0.005)], "cosine schedule over 2 epochs"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    with pytest.raises(ValueError, match="optim.schedule='poly'"):
        Experiment(load_config(None, _overrides(fake, tmp_path / "x", **{"optim.schedule": "poly"})))


def test_ddp_training_on_two_processes(fake, tmp_path):
    args = _overrides(fake, tmp_path, **{"optim.epochs": 1, "optim.batch_size": 8})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29555", "-m", "difrep.cli.main", "train", *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 40, "evaluation after DDP training still sees every test image once"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1], "only rank 0 logs"
