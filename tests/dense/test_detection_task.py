"""Mask R-CNN on the engine: the pyramid, training on tiny scenes, checkpoints, resume, 1 = 2 processes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from backbone_factories import save_dit_pipeline
from fakes import TINY_DENSE_ADM, count_loads, make_tiny_scenes, step_and_gap, torchrun_train

from difrep.cli.main import main
from difrep.dense import (
    DetectionBackbone,
    DetectionTask,
    SimpleFeaturePyramid,
    evaluate_detection_checkpoint,
    load_detection_config,
    train_detection,
)
from difrep.errors import UserError
from difrep.models import create_model


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_tiny_scenes(tmp_path_factory, train=16, test=4, scale_range=(0.7, 1.0))


def _overrides(root, out, **extra):
    base = {
        "task": "detection", "model.name": "adm", "model.flags": json.dumps(TINY_DENSE_ADM), "data.root": str(root),
        "data.check": "false", "data.workers": 0, "data.size": 64, "data.scale_range": "[0.8, 1.2]",
        "features.timesteps": "[50]", "features.blocks": "[3]", "features.input_size": 32,
        "head.out_channels": 16, "head.box_head": "mlp", "head.representation": 32, "head.mask_convs": 1,
        "head.rpn_convs": 1, "head.rpn_batch": 64, "head.roi_batch": 32, "head.anchor_sizes": "[16, 32, 64, 128, 256]",
        "optim.lr": 2e-3, "optim.batch_size": 4, "optim.iterations": 8, "optim.warmup": 2,
        "run.log_every": 4, "run.eval_every": 8, "run.out": str(out), "run.progress": "false",
        "run.tensorboard": "false", "run.draw": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_the_pyramid_has_vitdet_strides_and_widths():
    pyramid = SimpleFeaturePyramid(32, 16)
    levels = pyramid(torch.randn(2, 32, 6, 10))
    assert list(levels) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(v.shape) for v in levels.values()] == [(2, 16, 24, 40), (2, 16, 12, 20), (2, 16, 6, 10),
                                                         (2, 16, 3, 5), (2, 16, 2, 3)]
    with pytest.raises(UserError, match="multiple of 4"):
        SimpleFeaturePyramid(30)


def test_the_stride_16_map_is_the_block_at_step_t_with_each_images_own_noise(device):
    torch.manual_seed(0)
    model = create_model("adm", **TINY_DENSE_ADM).to(device).eval()
    backbone = DetectionBackbone(model, 50, 3, input_size=32, detector_size=64, out_channels=16).to(device)
    seen = {}
    backbone.pyramid.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    images = torch.rand(2, 3, 64, 96, device=device) * 2 - 1
    backbone.set_seeds([11, 12])
    backbone(images)
    # independently: resize by 32 / 64, noise each image from its seed, run to block 3, resample to H/16 x W/16
    x = F.interpolate(images, size=(32, 48), mode="bilinear", align_corners=False)
    noise = torch.stack([torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(s)) for s in (11, 12)])
    t = torch.full((2,), 50, device=device)
    xt = model.diffusion.q_sample(x, t, noise.to(device))
    block = model.forward_intermediates(xt, t, indices=[3])[3]
    want = F.interpolate(block, size=(4, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen["x"], want, rtol=1e-4, atol=1e-5)
    backbone.set_seeds([12])
    backbone(images[1:])
    torch.testing.assert_close(seen["x"], want[1:], rtol=1e-4, atol=1e-5, msg="an image's noise is its own")
    with pytest.raises(UserError, match="2 noise seeds for a batch of 1"):
        backbone.set_seeds([1, 2])
        backbone(images[:1])


def test_a_short_run_lowers_the_loss_and_saves_only_what_it_trains(scenes, tmp_path):
    cfg = load_detection_config(None, _overrides(scenes, tmp_path, **{"optim.iterations": 24, "run.log_every": 8,
                                                                     "run.eval_every": 24}))
    metrics = train_detection(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]
    assert 0 <= metrics["bbox_AP"] <= 100 and metrics["images"] == 4, "every test scene evaluated"
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert not any(k.startswith("backbone.backbone.") for k in state["weights"]), "the frozen U-Net is not saved"
    assert any(k.startswith("backbone.pyramid.") for k in state["weights"]) and any(
        k.startswith("roi_heads.mask_predictor") for k in state["weights"])
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert metrics["parameters"] == sum(v.numel() for k, v in state["weights"].items() if not k.endswith(buffers)) > 0
    assert (tmp_path / "predictions.png").stat().st_size > 500
    assert "Average Precision" in (tmp_path / "coco_eval.txt").read_text()
    again = evaluate_detection_checkpoint(tmp_path / "last.pt")
    assert again["bbox_AP"] == metrics["bbox_AP"] and again["segm_AP"] == metrics["segm_AP"], "evaluation is seeded"


def test_batched_evaluation_equals_one_image_at_a_time(scenes, tmp_path):
    """Batches of images of one size (the detector pads a batch to its largest) give each image's own detections
    and the same AP, whatever the batch and however it divides the split."""
    train_detection(load_detection_config(None, _overrides(scenes, tmp_path, **{"run.draw": 0})))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    tasks = {}
    for batch in (1, 3, None):  # None: optim.batch_size, 4 = every test scene in one forward; a low threshold
        # keeps the detections of this short run
        chosen = {"head.score_threshold": 0.01, **({} if batch is None else {"run.eval_batch": batch})}
        cfg = load_detection_config(None, _overrides(scenes, tmp_path / f"eval{batch}", **chosen))
        tasks[batch] = DetectionTask(cfg)
        tasks[batch].load_trainable_state(state["weights"], tmp_path / "last.pt")
    assert tasks[1].eval_batches() == [[0], [1], [2], [3]]
    assert tasks[3].eval_batches() == [[0, 1, 2], [3]] and tasks[None].eval_batches() == [[0, 1, 2, 3]]
    data = tasks[1].test_data
    images, indices = [data[i][0] for i in range(4)], list(range(4))
    together = tasks[None].predict_batch(images, indices)
    assert sum(len(found["boxes"]) for found in together) > 0, "a test without detections would prove nothing"
    for image, index, found in zip(images, indices, together):
        alone = tasks[1].predict(image, index)
        assert alone.keys() == found.keys()
        for key in alone:
            torch.testing.assert_close(found[key], alone[key], rtol=1e-4, atol=1e-4, msg=f"image {index}: {key}")
    metrics = {batch: task.evaluate() for batch, task in tasks.items()}
    assert metrics[1]["images"] == 4
    assert metrics[3] == pytest.approx(metrics[1]) and metrics[None] == pytest.approx(metrics[1])


def test_evaluation_batches_hold_images_of_one_size(scenes, tmp_path):
    task = DetectionTask(load_detection_config(None, _overrides(scenes, tmp_path, **{"run.eval_batch": 2})))
    coco, ids = task.test_data.coco, task.test_data.image_ids
    coco.imgs[ids[1]] = {**coco.imgs[ids[1]], "height": 48}  # only the plan reads the sizes; nothing is loaded
    assert task.eval_batches() == [[0, 2], [3], [1]]
    with pytest.raises(UserError, match="run.eval_batch must be positive"):
        DetectionTask(load_detection_config(None, _overrides(scenes, tmp_path, **{"run.eval_batch": 0})))


def test_a_killed_run_resumes_to_the_same_weights(scenes, tmp_path, monkeypatch):
    train_detection(load_detection_config(None, _overrides(scenes, tmp_path / "a", **{"run.draw": 0})))
    original = DetectionTask.loss

    def killed(self, net, batch, step):
        if step == 5:  # inside the second period, after its first step changed the weights
            raise KeyboardInterrupt
        return original(self, net, batch, step)

    monkeypatch.setattr(DetectionTask, "loss", killed)
    with pytest.raises(KeyboardInterrupt):
        train_detection(load_detection_config(None, _overrides(scenes, tmp_path / "b", **{"run.draw": 0})))
    monkeypatch.setattr(DetectionTask, "loss", original)
    train_detection(load_detection_config(None, _overrides(scenes, tmp_path / "b", **{"run.draw": 0})))
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("a", "b"))
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], b["weights"][k], rtol=0, atol=0, msg=k)
    assert a["history"][-1]["bbox_AP"] == b["history"][-1]["bbox_AP"]


def test_two_processes_take_the_steps_of_one(scenes, tmp_path):
    """Anchors, RoIs and noise are drawn per image: 2 processes of batch 2 take the steps of 1 of batch 4, up to
    the mask loss's mean over each process's positive RoIs; evaluation counts every image once."""
    common = {"optim.iterations": 4, "run.log_every": 4, "run.eval_every": 4, "run.draw": 0}
    train_detection(load_detection_config(None, _overrides(scenes, tmp_path / "one", **common)))
    args = _overrides(scenes, tmp_path / "two", **common, **{"optim.batch_size": 2})
    torchrun_train(args)
    one, two = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("one", "two"))
    init = DetectionTask(load_detection_config(None, _overrides(scenes, tmp_path / "init", **common))).trainable_state()
    step, gap = step_and_gap(one["weights"], two["weights"], init)
    assert step > 1e-3 and gap < 1e-3 * step, f"2 processes differ by {gap:.2e}, the 4 steps moved {step:.2e}"
    r1, r2 = one["history"][-1], two["history"][-1]
    assert r1["images"] == r2["images"] == 4, "every test image counted once"


def test_any_backbone_of_the_interface_and_bad_settings(scenes, tmp_path):
    resnet = load_detection_config(None, _overrides(scenes, tmp_path / "timm", **{
        "model.name": "timm:resnet18", "model.flags": json.dumps({"image_size": 64}), "features.blocks": "[3]",
        "features.input_size": 64, "optim.iterations": 2, "run.log_every": 2, "run.eval_every": 2, "run.draw": 0}))
    task = DetectionTask(resnet)
    assert task.model.block_info(3).reduction == 16, "ResNet's layer3 is the stride-16 map"
    metrics = train_detection(resnet)
    assert 0 <= metrics["bbox_AP"] <= 100
    save_dit_pipeline(tmp_path / "dit_model")
    dit = load_detection_config(None, _overrides(scenes, tmp_path / "dit", **{
        "model.name": f"diffusers:{tmp_path / 'dit_model'}", "model.flags": "{}", "features.blocks": "[2]", "features.input_size": 64,
        "optim.iterations": 2, "run.log_every": 2, "run.eval_every": 2, "run.draw": 0}))
    assert DetectionTask(dit).model.block_info(2).reduction == 4, "a DiT block is resampled to the stride-16 grid"
    assert 0 <= train_detection(dit)["bbox_AP"] <= 100
    tuned = load_detection_config(None, _overrides(scenes, tmp_path / "tuned", **{
        "run.finetune": "true", "optim.iterations": 2, "run.log_every": 2, "run.eval_every": 2, "run.draw": 0}))
    task = DetectionTask(tuned)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    train_detection(tuned)
    saved = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["weights"]
    changed = [k for k, v in before.items() if not torch.equal(saved["backbone.backbone." + k], v)]
    assert changed, "fine-tuning trains the U-Net and saves it"
    with pytest.raises(UserError, match="one noise step and one block"):
        DetectionTask(load_detection_config(None, _overrides(scenes, tmp_path, **{"features.blocks": "[2, 3]"})))
    with pytest.raises(UserError, match="data.size=72: use a positive multiple of 32"):
        DetectionTask(load_detection_config(None, _overrides(scenes, tmp_path, **{"data.size": 72})))
    with pytest.raises(UserError, match="features.input_size=31"):
        DetectionTask(load_detection_config(None, _overrides(scenes, tmp_path, **{"features.input_size": 31})))


def test_difrep_train_picks_the_detection_task_and_evaluate_reads_it(scenes, tmp_path, capsys, monkeypatch):
    args = _overrides(scenes, tmp_path, **{"optim.iterations": 2, "run.log_every": 2, "run.eval_every": 2,
                                           "run.draw": 0})
    assert main(["train", *args]) == 0
    assert "box AP" in capsys.readouterr().out
    reads = count_loads(monkeypatch, tmp_path / "last.pt")
    assert main(["evaluate", str(tmp_path / "last.pt"), "--out", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["images"] == 4
    assert len(reads) == 1, "evaluate reads the checkpoint once"
