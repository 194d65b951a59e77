"""step: one training step of every head, under fp16 autocast with a GradScaler, on the frozen U-Net."""

from __future__ import annotations

import math
from typing import Any

from .common import Check, Setup, timed


def make_step_check(head_name: str) -> Check:
    def check(setup: Setup) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        from difrep.training.config import FeatureConfig, HeadConfig, TrainConfig
        from difrep.training.trainer import Classifier, block_shapes, build_head

        model = setup.backbone()
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)
        timesteps, blocks = setup.fusion if head_name == "difformer" else ([setup.gd[0]], [setup.gd[1]])
        s = setup.head_sizes
        cfg = TrainConfig(features=FeatureConfig(timesteps=list(timesteps), blocks=list(blocks)),
                          head=HeadConfig(name=head_name, dim=s["dim"], depth=s["depth"], num_heads=s["num_heads"],
                                          hidden=list(s["hidden"]), conv_channels=list(s["conv_channels"])))
        torch.manual_seed(0)
        head = build_head(cfg, setup.num_classes, block_shapes(model, cfg.features.blocks), model)
        clf = Classifier(model, head, cfg.features.timesteps, cfg.features.blocks, seed=0, finetune=False)
        clf = clf.to(setup.dev)
        clf.train(True)
        model.eval()  # as the trainer does for a frozen U-Net
        params = [p for p in clf.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head.parameters() if p.requires_grad}
        if not params or any(id(p) not in head_ids for p in params):
            raise AssertionError("the trainable parameters must be exactly the head's")
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler(setup.dev.type)
        n = setup.head_batch
        gen = torch.Generator().manual_seed(2)
        x = (torch.rand(n, 3, model.image_size, model.image_size, generator=gen) * 2 - 1).to(setup.dev)
        y = torch.randint(0, setup.num_classes, (n,), generator=gen).to(setup.dev)
        indices = list(range(n))

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(setup.dev.type, dtype=torch.float16):
                loss = F.cross_entropy(clf(x, indices).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return loss.item()

        before = [p.detach().clone() for p in params]
        skipped = 0
        for _attempt in range(4):
            scale = scaler.get_scale()
            last, loss = timed(setup, step, 1)
            if not math.isfinite(loss):
                raise AssertionError(f"loss {loss}")
            if scaler.get_scale() >= scale:  # the step was taken
                break
            skipped += 1
        else:
            raise AssertionError(f"GradScaler skipped {skipped} steps in a row (inf/nan gradients)")
        changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, params))
        if changed == 0:
            raise AssertionError("no head parameter changed after scaler.step")
        if any(p.grad is not None for p in model.parameters()):
            raise AssertionError("the frozen U-Net received gradients")
        seconds = last
        if setup.cuda:  # the first steps paid for cuDNN autotuning and the allocator: time a warm one
            seconds, loss2 = timed(setup, step, 1)
            if not math.isfinite(loss2):
                raise AssertionError(f"second step: loss {loss2}")
        note = (f"loss {loss:.3f}, {changed}/{len(params)} tensors changed, "
                f"{sum(p.numel() for p in params) / 1e6:.1f}M params")
        if skipped:
            note += f", {skipped} step(s) skipped by the scaler first"
        return {"ips": n / seconds, "note": note}

    return check
