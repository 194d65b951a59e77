"""The ``samples`` stage: the same model generates (the paper's unified claim). DDIM (and DDPM) samples, their
channel agreement, and how often a reference classifier names them with confidence, beside real test images."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...diffusion import sample
from ...evaluation.samples import accuracy, channel_disagreement, sample_recognition
from ...training import train_reference_classifier
from ...utils.images import save_grid
from ..context import StudyContext
from .base import Result, Stage, table


class SamplesStage(Stage):
    kind = "samples"
    title = "Samples from the same model"
    defaults: ClassVar[dict[str, Any]] = {"num": 64, "steps": 50, "colour_num": 64, "ddpm_num": 0, "ddpm_steps": 250, "classifier_epochs": 0,
                "threshold": 0.9}

    def run(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result:
        s, model = self.settings, ctx.trained
        began = time.perf_counter()
        images = sample(model, s["num"], steps=s["steps"], method="ddim", seed=0, device=ctx.device,
                        progress=ctx.progress).cpu()
        save_grid(images[: s["colour_num"]], folder / f"samples_ddim{s['steps']}.png")
        ddpm = sample(model, s["ddpm_num"], steps=s["ddpm_steps"], method="ddpm", seed=0, device=ctx.device,
                      progress=ctx.progress).cpu() if s["ddpm_num"] else None
        if ddpm is not None:
            save_grid(ddpm, folder / f"samples_ddpm{s['ddpm_steps']}.png")
        result: Result = {"channels": images.shape[1], "samples": s["num"], "steps": s["steps"],
                          "ddpm_samples": s["ddpm_num"], "ddpm_steps": s["ddpm_steps"],
                          "channel_disagreement": channel_disagreement(images[: s["colour_num"]]),
                          "sample_seconds": time.perf_counter() - began}
        if s["classifier_epochs"]:
            train, test = ctx.grey_images("train"), ctx.grey_images("test")
            classifier = train_reference_classifier(*train, epochs=s["classifier_epochs"], seed=0, progress=ctx.progress,
                                                    device=ctx.device)
            torch.save(classifier.state_dict(), folder / "reference_classifier.pt")
            seen = sample_recognition(classifier, images, test[0], threshold=s["threshold"])
            if ddpm is not None:
                seen["ddpm_samples"] = sample_recognition(classifier, ddpm, test[0], threshold=s["threshold"])["samples"]
            result |= {"classifier_test_top1": accuracy(classifier, *test), "threshold": s["threshold"],
                       "recognition": {k: asdict(v) for k, v in seen.items()}}
        return result

    def report(self, s: Result, folder: str) -> list[str]:
        lines = [f"DDIM, {s['steps']} steps, seed 0 (the first {min(s['samples'], 64)} of {s['samples']}):", "",
                 f"![DDIM samples]({folder}/samples_ddim{s['steps']}.png)", ""]
        if s["ddpm_samples"]:
            lines += [f"DDPM, {s['ddpm_steps']} steps, learned variance ({s['ddpm_samples']} samples):", "",
                      f"![DDPM samples]({folder}/samples_ddpm{s['ddpm_steps']}.png)", ""]
        if "recognition" not in s:
            return lines
        rec = s["recognition"]
        ddpm = rec.get("ddpm_samples")
        return lines + table(
            ["measure", f"DDIM-{s['steps']} samples", f"DDPM-{s['ddpm_steps']} samples" if ddpm else "-", "real test images"], [
                [f"mean absolute channel difference of the first {min(s['samples'], 64)}"
                 + (" (a one-channel model: 0 by construction)" if s["channels"] == 1 else ""),
                 f"{s['channel_disagreement']:.4f}", "-", "0"],
                [f"named with confidence >= {s['threshold']:.0%} by the reference classifier "
                 f"({s['classifier_test_top1']:.1f}% test top-1)", f"{rec['samples']['confident_rate']:.1f}%",
                 f"{ddpm['confident_rate']:.1f}%" if ddpm else "-", f"{rec['real']['confident_rate']:.1f}%"],
                ["mean top confidence", f"{rec['samples']['mean_confidence']:.1f}%",
                 f"{ddpm['mean_confidence']:.1f}%" if ddpm else "-", f"{rec['real']['mean_confidence']:.1f}%"],
                ["images named each class", rec["samples"]["class_counts"], ddpm["class_counts"] if ddpm else "-",
                 rec["real"]["class_counts"]]])
