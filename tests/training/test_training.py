"""The training loop: learning on real data, resume equivalence, config checks, 1 vs 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from fakes import count_loads, make_fashion_mnist

from difrep.cli.main import main
from difrep.data import DEBIAN_FASHION_MNIST
from difrep.engine import Engine
from difrep.training import ClassificationTask, evaluate_checkpoint, load_config, train

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
    original = ClassificationTask.loss

    def killed_in_epoch_2(self, net, batch, step):
        if step == 3:  # epoch 2 (2 steps of 16 images an epoch), after its first step changed the weights
            raise KeyboardInterrupt
        return original(self, net, batch, step)

    monkeypatch.setattr(ClassificationTask, "loss", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, _overrides(fake, tmp_path / "b", **extra)))
    monkeypatch.setattr(ClassificationTask, "loss", original)
    resumed = train(load_config(None, _overrides(fake, tmp_path / "b", **extra)))
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["weights"].keys() == b["weights"].keys() and not any(k.startswith("model.") for k in a["weights"])
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in a["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in b["history"]]
    assert (reference["top1"], reference["top5"]) == (resumed["top1"], resumed["top5"])

    def logged(run: str) -> tuple[list[dict], list[str]]:
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        csv_rows = (tmp_path / run / "metrics.csv").read_text().splitlines()
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows], [r.split(",")[:2] for r in csv_rows]

    assert logged("b") == logged("a") and [row["epoch"] for row in logged("a")[0]] == [1, 2, 3]
    (tmp_path / "b" / "last.pt").unlink()  # a run folder kept without its weights (a committed study) starts again
    again = train(load_config(None, _overrides(fake, tmp_path / "b", **extra)))
    assert logged("b") == logged("a"), "each epoch is logged once"
    assert (again["top1"], again["top5"]) == (reference["top1"], reference["top5"])


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


def test_data_smaller_than_one_batch_is_refused_not_left_untrained(fake, tmp_path):
    with pytest.raises(ValueError, match="not one training batch.*lower the batch size"):
        train(load_config(None, _overrides(fake, tmp_path, **{"optim.batch_size": 64})))  # 40 images


@pytest.mark.parametrize("head", ["linear", "mlp", "cnn", "attention", "difformer", "difeed"])
def test_every_head_learns_and_saves_only_what_it_trains(fake, tmp_path, head):
    """The fake images carry a label-dependent brightness: every head must lower its loss and beat chance
    (10%) clearly, and its checkpoint must hold the head alone, never the frozen U-Net (DifFeed holds
    the U-Net twice, as model and head.model)."""
    extra = {"head.name": head, "head.dim": 32, "head.depth": 1, "head.num_heads": 4, "head.hidden": "[32]",
             "head.conv_channels": "[16,8]", "optim.epochs": 6, "optim.eval_every": 6, "optim.batch_size": 8,
             "optim.name": "adam", "optim.lr": 0.003, "optim.schedule": "constant"}
    if head == "difformer":
        extra.update({"features.timesteps": "[50,150]", "features.blocks": "[3,4]"})
    metrics = train(load_config(None, _overrides(fake, tmp_path, **extra)))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.2, f"{head} did not learn: losses {losses}"
    assert metrics["images"] == 40 and metrics["top1"] >= 25, f"{head}: top-1 {metrics['top1']}% (chance 10%)"
    weights = torch.load(tmp_path / "last.pt", weights_only=True)["weights"]
    assert weights and not any(k.startswith(("model.", "head.model.")) for k in weights), sorted(weights)[:3]
    exp = ClassificationTask(load_config(None, _overrides(fake, tmp_path / "x", **extra)))
    head_params = sum(p.numel() for p in exp.classifier.head.parameters() if p.requires_grad)
    assert sum(v.numel() for v in weights.values() if v.is_floating_point()) <= head_params + 4 * 1024
    assert metrics["parameters"] == head_params, "metrics count the trained parameters, not buffers"


def test_a_finetuned_difeed_saves_the_unet_once(fake, tmp_path):
    extra = {"head.name": "difeed", "head.dim": 32, "head.depth": 1, "head.num_heads": 4, "optim.epochs": 1,
             "run.finetune": "true", "optim.lr": 0.001}
    train(load_config(None, _overrides(fake, tmp_path, **extra)))
    weights = torch.load(tmp_path / "last.pt", weights_only=True)["weights"]
    assert any(k.startswith("model.") for k in weights)
    assert not any(k.startswith("head.model.") for k in weights), "the U-Net is saved a second time"
    resumed = Engine(ClassificationTask(load_config(None, _overrides(fake, tmp_path, **extra))))
    assert resumed.resume() == 1, "the saved U-Net and head load back"


def test_pruning_keeps_exactly_what_the_features_reach(fake, tmp_path):
    """Fine-tuning at block 4 of 9 must leave no trainable U-Net parameter without a gradient (DDP
    refuses that), and DifFeed's first-pass-only blocks must be frozen."""
    cfg = load_config(None, _overrides(fake, tmp_path, **{"run.finetune": "true"}))
    exp = ClassificationTask(cfg)
    assert exp.model.num_blocks == 4 and exp.model.out is None
    images, labels, indices = next(iter(exp.train_loader(0)))
    indices = indices.tolist()
    exp.classifier.train()
    torch.nn.functional.cross_entropy(exp.classifier(images, indices), labels).backward()
    assert all(p.grad is not None for p in exp.model.parameters() if p.requires_grad)
    cfg = load_config(None, _overrides(fake, tmp_path, **{"run.finetune": "true", "head.name": "difeed",
                                                          "head.dim": 32, "head.depth": 1, "head.num_heads": 4}))
    exp = ClassificationTask(cfg)
    exp.classifier.train()
    torch.nn.functional.cross_entropy(exp.classifier(images, indices), labels).backward()
    trainable = [p for p in exp.model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert exp.model.num_blocks == max(b for pair in exp.classifier.head.pairs for b in pair)


def test_evaluation_is_the_same_on_one_and_two_processes(fake, tmp_path):
    train(load_config(None, _overrides(fake, tmp_path / "run", **{"optim.epochs": 1})))
    ckpt = tmp_path / "run" / "last.pt"
    one = subprocess.run([sys.executable, "-m", "difrep.cli.main", "evaluate", str(ckpt), "--out", str(tmp_path / "1.json")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          "-m", "difrep.cli.main", "evaluate", str(ckpt), "--out", str(tmp_path / "2.json")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-2000:]
    r1, r2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in (1, 2))
    assert r1["images"] == r2["images"] == 40
    assert (r1["top1"], r1["top5"]) == (r2["top1"], r2["top5"])


def test_difrep_evaluate_reads_the_checkpoint_once(fake, tmp_path, monkeypatch):
    """The command reads the task from the checkpoint and hands what it read to the task's evaluator."""
    train(load_config(None, _overrides(fake, tmp_path, **{"optim.epochs": 1})))
    reads = count_loads(monkeypatch, tmp_path / "last.pt")
    assert main(["evaluate", str(tmp_path / "last.pt"), "--out", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["images"] == 40
    assert len(reads) == 1


def test_finetuning_bf16_cosine_and_tensorboard(fake, tmp_path):
    cfg = load_config(None, _overrides(fake, tmp_path, **{
        "run.finetune": "true", "run.precision": "bf16", "optim.schedule": "cosine", "optim.epochs": 2,
        "optim.grad_accum": 2, "run.tensorboard": "true", "optim.lr": 0.01}))
    before = {k: v.clone() for k, v in ClassificationTask(cfg).model.state_dict().items()}
    train(cfg)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    tuned = {k[len("model."):]: v for k, v in state["weights"].items() if k.startswith("model.")}
    assert tuned.keys() == before.keys(), "a fine-tuned run saves the U-Net too"
    assert any(not torch.equal(tuned[k], before[k]) for k in before), "fine-tuning changes the U-Net"
    lrs = [row["lr"] for row in state["history"]]
    assert lrs == [0.01, pytest.approx(0.005)], "cosine schedule over 2 epochs"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    with pytest.raises(ValueError, match="optim.schedule='poly'"):
        ClassificationTask(load_config(None, _overrides(fake, tmp_path / "x", **{"optim.schedule": "poly"})))


def test_ddp_finetuning_on_two_processes_equals_one_process(fake, tmp_path):
    """Fine-tuning under torchrun (the semi-supervised protocol): 2 processes of batch 4 take the same
    steps as 1 process of batch 8 (same global batches, same per-image noise), so the weights agree."""
    common = {"optim.epochs": 1, "optim.eval_every": 1, "run.finetune": "true", "optim.lr": 0.01,
              "data.per_class": 3}  # 30 images: 3 steps of 8 images
    train(load_config(None, _overrides(fake, tmp_path / "one", **common, **{"optim.batch_size": 8})))
    args = _overrides(fake, tmp_path / "two", **common, **{"optim.batch_size": 4})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "difrep.cli.main", "train", *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("one", "two"))
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1], "only rank 0 logs"
    assert one["history"][0]["images"] == two["history"][0]["images"] == 30, "every test image counted once"
    assert any(k.startswith("model.") for k in two["weights"]), "the fine-tuned U-Net is saved"
    init = ClassificationTask(load_config(None, _overrides(fake, tmp_path / "init", **common))).trainable_state()
    # oneDNN's kernels and gloo's all-reduce round differently at batch 4 and 8, and momentum carries the
    # round-off on; a wrong gradient average, other batches or other noise move the weights by about a step
    keys = [k for k, v in one["weights"].items() if v.is_floating_point()]
    step = torch.cat([(one["weights"][k] - init[k]).flatten() for k in keys]).norm()
    gap = torch.cat([(two["weights"][k] - one["weights"][k]).flatten() for k in keys]).norm()
    assert step > 1e-2 and gap < 0.02 * step, f"2 processes differ by {gap:.2e}, the 3 steps moved {step:.2e}"
    assert abs(one["history"][0]["loss"] - two["history"][0]["loss"]) < 1e-4


def test_a_head_trains_from_a_feature_cache_and_evaluates_the_same_online(fake, tmp_path):
    """features.cache_train/cache_test: the head learns from cached features, and its checkpoint, evaluated on
    the images through the U-Net (same per-image noise, float32 cache), gives the same top-1 and top-5."""
    flags = [x for k, v in TINY.items() for x in (f"--{k}", str(v))]
    for split in ("train", "test"):
        assert main(["extract", "--model", "adm", *flags, "--data", "fashion-mnist", "--root", str(fake), "--no-check",
                     "--workers", "0", "--split", split, "--timesteps", "100", "--blocks", "4", "--pool", "2",
                     "--storage", "float32", "--out", str(tmp_path / split), "--seed", "0"]) == 0
    cached = {"features.cache_train": str(tmp_path / "train"), "features.cache_test": str(tmp_path / "test"),
              "features.pool": 2, "optim.epochs": 4, "optim.eval_every": 4, "optim.name": "adam", "optim.lr": 0.003,
              "optim.batch_size": 8}
    metrics = train(load_config(None, _overrides(fake, tmp_path / "run", **cached)))
    assert metrics["images"] == 40 and metrics["top1"] >= 25
    weights = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["weights"]
    assert sorted(weights) == ["head.fc.bias", "head.fc.weight"]
    online = evaluate_checkpoint(tmp_path / "run" / "last.pt", {"features.cache_train": None,
                                                                 "features.cache_test": None, "features.pool": None})
    assert (online["top1"], online["top5"]) == (metrics["top1"], metrics["top5"])
    with pytest.raises(ValueError, match="cannot train from cached features"):
        ClassificationTask(load_config(None, _overrides(fake, tmp_path / "x", **{**cached, "head.name": "difeed"})))
    with pytest.raises(ValueError, match="go together"):
        ClassificationTask(load_config(None, _overrides(fake, tmp_path / "x", **{"features.cache_train": "a"})))
