"""train: ``difrep.training.train`` end to end on a tiny folder data set, with checkpoint re-evaluation."""

from __future__ import annotations

import math
from typing import Any

from .common import Check, Setup, count_images, data_root, train_overrides


def make_train_check(precision: str, head_name: str, finetune: bool) -> Check:
    def check(setup: Setup) -> dict[str, Any]:
        import torch

        from difrep.training import load_config, train
        from difrep.training.trainer import evaluate_checkpoint

        out = setup.tmp / f"train_{precision}_{head_name}{'_ft' if finetune else ''}"
        cfg = load_config(None, train_overrides(setup, out, **{
            "run.precision": precision, "head.name": head_name, "run.finetune": str(finetune).lower(),
            "optim.lr": 0.001 if finetune else 0.01}))
        metrics = train(cfg)
        if setup.cuda and torch.cuda.max_memory_allocated() == 0:
            raise AssertionError("nothing was allocated on the GPU: the trainer did not run there")
        n_test, n_train = count_images(data_root(setup) / "test"), count_images(data_root(setup) / "train")
        if metrics.get("images") != n_test:
            raise AssertionError(f"evaluate() counted {metrics.get('images')} test images, expected {n_test}")
        if not math.isfinite(metrics["loss"]):
            raise AssertionError(f"loss {metrics['loss']}")
        for name in ("last.pt", "metrics.json", "metrics.csv"):
            if not (out / name).is_file():
                raise AssertionError(f"{name} was not written")
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        tuned = [k for k in state["weights"] if k.startswith("model.")]
        if finetune != bool(tuned):
            raise AssertionError(f"run.finetune={finetune} but the checkpoint holds {len(tuned)} U-Net tensors")
        note = f"loss {metrics['loss']:.3f}, top-1 {metrics['top1']:.1f}% of {n_test}"
        if finetune:
            from difrep import create_model

            torch.manual_seed(cfg.run.seed)  # the trainer's seed before it builds the U-Net
            init = create_model(cfg.model.name, **cfg.model.flags).state_dict()
            # the trainer may prune the blocks after the deepest one the head reads: compare what was kept
            kept = [k[len("model."):] for k in tuned if k[len("model."):] in init]
            if not kept:
                raise AssertionError(f"the checkpoint's U-Net tensors do not match the model's names: {tuned[:3]}")
            moved = sum(not torch.equal(state["weights"]["model." + k], init[k]) for k in kept)
            if moved == 0:
                raise AssertionError("run.finetune=true left the U-Net unchanged")
            note += f", {moved}/{len(kept)} U-Net tensors changed"
        if precision == "fp16" and not finetune:
            again = evaluate_checkpoint(out / "last.pt", {"run.progress": False})
            if abs(again["top1"] - metrics["top1"]) > 100 / n_test + 1e-9 or again["images"] != n_test:
                raise AssertionError(f"evaluate_checkpoint gives top-1 {again['top1']:.2f}% of {again['images']}, "
                                     f"training ended with {metrics['top1']:.2f}% of {n_test}")
            note += ", evaluate_checkpoint agrees"
        return {"ips": (n_train + n_test) / metrics["seconds"], "note": note}

    return check
