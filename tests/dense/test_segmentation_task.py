"""UperNet segmentation on the engine: learning on the scenes, checkpoints, resume, 1 = 2 processes, other backbones."""

from __future__ import annotations

import json

import pytest
import torch
from backbone_factories import save_dit_pipeline
from fakes import TINY_DENSE_ADM, count_loads, make_tiny_scenes, step_and_gap, torchrun_train

from difrep.cli.main import main
from difrep.data import create_segmentation_dataset
from difrep.dense import (
    IGNORE_INDEX,
    SegmentationTask,
    evaluate_segmentation_checkpoint,
    load_segmentation_config,
    train_segmentation,
)
from difrep.engine import Engine
from difrep.errors import UserError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_tiny_scenes(tmp_path_factory, train=24, test=6, scale_range=(0.6, 1.0))


def _overrides(root, out, **extra):
    base = {
        "task": "segmentation", "model.name": "adm", "model.flags": json.dumps(TINY_DENSE_ADM),
        "data.name": "scenes", "data.root": str(root), "data.check": "false", "data.workers": 0, "data.crop": 32,
        "data.scale": "[32, 32]", "data.ratio_range": "[0.75, 1.5]", "features.timesteps": "[50]",
        "features.blocks": "[3]", "features.input_size": 32, "head.channels": 16, "head.decoder_channels": 16,
        "head.aux_channels": 8, "optim.lr": 3e-3, "optim.batch_size": 4, "optim.iterations": 8, "optim.warmup": 2,
        "run.log_every": 4, "run.eval_every": 8, "run.slide": "false", "run.out": str(out), "run.progress": "false",
        "run.tensorboard": "false", "run.overlays": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_a_short_run_lowers_the_loss_beats_chance_and_saves_only_what_it_trains(scenes, tmp_path):
    cfg = load_segmentation_config(None, _overrides(scenes, tmp_path, **{"optim.iterations": 80, "run.log_every": 16,
                                                                       "run.eval_every": 80, "optim.lr": 1e-2}))
    metrics = train_segmentation(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.2, [r["loss"] for r in rows]
    # chance: predicting the most frequent class (background) everywhere
    test = create_segmentation_dataset("scenes", scenes, "test", check=False)
    labels = torch.cat([test[i][1].flatten() for i in range(len(test))])
    labels = labels[labels != IGNORE_INDEX]
    background = (labels == 0).double().mean().item()
    chance_miou = 100 * background / len(labels.unique())
    assert metrics["mIoU"] > 1.5 * chance_miou and metrics["aAcc"] > 100 * background, (metrics, background)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert not any(k.startswith("features.backbone.") for k in state["weights"]), "the frozen U-Net is not saved"
    assert any(k.startswith("decoder.") for k in state["weights"]) and any(k.startswith("features.proj") for k in state["weights"])
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert metrics["parameters"] == sum(v.numel() for k, v in state["weights"].items() if not k.endswith(buffers)) > 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert len(saved["per_class_iou"]) == 11 and "background" in saved["per_class_iou"]
    assert (tmp_path / "overlays.png").stat().st_size > 500
    again = evaluate_segmentation_checkpoint(tmp_path / "last.pt")
    assert again["mIoU"] == pytest.approx(metrics["mIoU"]) and again["pixels"] == saved["pixels"]


def test_a_killed_run_resumes_to_the_same_weights(scenes, tmp_path, monkeypatch):
    reference = train_segmentation(load_segmentation_config(None, _overrides(scenes, tmp_path / "a")))
    original = SegmentationTask.loss

    def killed(self, net, batch, step):
        if step == 5:  # inside the second period, after its first step changed the weights
            raise KeyboardInterrupt
        return original(self, net, batch, step)

    monkeypatch.setattr(SegmentationTask, "loss", killed)
    with pytest.raises(KeyboardInterrupt):
        train_segmentation(load_segmentation_config(None, _overrides(scenes, tmp_path / "b")))
    monkeypatch.setattr(SegmentationTask, "loss", original)
    resumed = train_segmentation(load_segmentation_config(None, _overrides(scenes, tmp_path / "b")))
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True)["weights"] for n in ("a", "b"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed["mIoU"] == reference["mIoU"]


def test_two_processes_take_the_steps_of_one(scenes, tmp_path):
    """GroupNorm (batch-independent) and no dropout (each process draws its own masks): 2 processes of batch 2
    take the steps of 1 process of batch 4 (same images, crops and noise), and evaluation agrees."""
    common = {"head.norm": "groupnorm", "head.dropout": 0.0, "optim.iterations": 4, "run.log_every": 4, "run.eval_every": 4,
              "run.overlays": 0}
    train_segmentation(load_segmentation_config(None, _overrides(scenes, tmp_path / "one", **common)))
    args = _overrides(scenes, tmp_path / "two", **common, **{"optim.batch_size": 2})
    torchrun_train(args)
    one, two = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("one", "two"))
    init = SegmentationTask(load_segmentation_config(None, _overrides(scenes, tmp_path / "init", **common))).trainable_state()
    step, gap = step_and_gap(one["weights"], two["weights"], init)
    assert step > 1e-3 and gap < 0.02 * step, f"2 processes differ by {gap:.2e}, the 4 steps moved {step:.2e}"
    r1, r2 = one["history"][-1], two["history"][-1]
    assert r1["pixels"] == r2["pixels"] > 0, "every validation image counted once"
    assert r1["mIoU"] == pytest.approx(r2["mIoU"], abs=1e-6)


def test_difeed_feedback_and_a_timm_pyramid_train(scenes, tmp_path):
    difeed = load_segmentation_config(None, _overrides(scenes, tmp_path / "difeed", **{
        "features.blocks": "[4, 5, 3, 2]", "features.feedback": "windowed", "optim.iterations": 2, "run.log_every": 2,
        "run.eval_every": 2, "run.overlays": 0}))
    task = SegmentationTask(difeed)
    assert task.net.features.feedback is not None and task.net.features.levels == [2, 3, 4, 5], "32, then 16 px"
    Engine(task).run()
    assert any(k.startswith("features.feedback.") for k in torch.load(tmp_path / "difeed" / "last.pt",
                                                                          weights_only=True)["weights"])
    resnet = load_segmentation_config(None, _overrides(scenes, tmp_path / "timm", **{
        "model.name": "timm:resnet18", "model.flags": json.dumps({"image_size": 32}), "features.blocks": "[1, 2, 3, 4]",
        "optim.iterations": 2, "run.log_every": 2, "run.eval_every": 2, "run.overlays": 0}))
    task = SegmentationTask(resnet)
    assert task.net.features.levels == [1, 2, 3, 4], "ResNet stages are already strides 4..32"
    metrics = Engine(task).run()
    assert 0 <= metrics["mIoU"] <= 100


def test_a_dit_block_serves_the_four_levels(scenes, tmp_path):
    save_dit_pipeline(tmp_path / "dit_model")
    dit = load_segmentation_config(None, _overrides(scenes, tmp_path / "dit", **{
        "model.name": f"diffusers:{tmp_path / 'dit_model'}", "model.flags": "{}", "features.blocks": '["final"]', "features.input_size": 32,
        "optim.iterations": 2, "run.log_every": 2, "run.eval_every": 2, "run.overlays": 0}))
    task = SegmentationTask(dit)
    assert task.net.features.levels == [4] * 4 and task.net.features.noise_shape() == (4, 16, 16), "VAE latents"
    metrics = Engine(task).run()
    assert 0 <= metrics["mIoU"] <= 100
    with pytest.raises(UserError, match="input_size=30: use a positive multiple of 4, what this DiT's input sides"):
        SegmentationTask(load_segmentation_config(None, _overrides(scenes, tmp_path, **{
            "model.name": f"diffusers:{tmp_path / 'dit_model'}", "model.flags": "{}", "features.input_size": 30})))


def test_bad_settings_are_refused(scenes, tmp_path):
    with pytest.raises(UserError, match="optim.batch_size=1 with head.norm=batchnorm"):
        SegmentationTask(load_segmentation_config(None, _overrides(scenes, tmp_path, **{"optim.batch_size": 1})))
    with pytest.raises(UserError, match="give 1 block .* or 4"):
        SegmentationTask(load_segmentation_config(None, _overrides(scenes, tmp_path, **{"features.blocks": "[2, 3]"})))
    with pytest.raises(UserError, match="input_size=31: use a positive multiple of 2"):
        SegmentationTask(load_segmentation_config(None, _overrides(scenes, tmp_path, **{"features.input_size": 31})))


def test_difrep_train_picks_the_segmentation_task_and_evaluate_reads_it(scenes, tmp_path, capsys, monkeypatch):
    args = _overrides(scenes, tmp_path, **{"optim.iterations": 2, "run.log_every": 2, "run.eval_every": 2,
                                           "run.overlays": 0})
    assert main(["train", *args]) == 0
    assert "mIoU" in capsys.readouterr().out
    reads = count_loads(monkeypatch, tmp_path / "last.pt")
    assert main(["evaluate", str(tmp_path / "last.pt"), "--out", str(tmp_path / "eval.json")]) == 0
    assert "per_class_iou" in json.loads((tmp_path / "eval.json").read_text())
    assert len(reads) == 1, "evaluate reads the checkpoint once"
