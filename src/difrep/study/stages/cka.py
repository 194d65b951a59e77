"""The ``cka`` stage: linear CKA across blocks, across noise steps, and against the random-init copy (Figure 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from ...data import balanced_subset
from ...evaluation.cka import cka_matrix
from ...evaluation.plots import plot_cka
from ...features.cache import FeatureCache, FeatureKey
from ..context import StudyContext
from .base import Result, Stage


class CkaStage(Stage):
    kind = "cka"
    title = "Linear CKA (Figure 5)"
    defaults: ClassVar[dict[str, Any]] = {"images": 2500, "pool": 2, "timestep": None, "block": None, "timesteps": None, "blocks": None}

    def run(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result:
        s = self.settings
        t0, b0, pool = s["timestep"], s["block"], s["pool"]
        blocks = sorted(set(s["blocks"] or range(1, ctx.trained.num_blocks + 1)))
        steps = sorted(set(s["timesteps"] or [t0]))
        trained = ctx.cache("trained", "test", steps, blocks, [pool])
        rand = ctx.cache("random", "test", [t0], blocks, [pool])
        labels = trained.labels
        per_class = max(1, min(s["images"], len(labels)) // (int(labels.max()) + 1))
        rows = torch.tensor(balanced_subset(labels.tolist(), per_class=per_class, seed=0))

        def get(cache: FeatureCache, t: int, b: int) -> torch.Tensor:
            return cache.features(FeatureKey(t, b, pool))[rows].double()

        at_t0 = [get(trained, t0, b) for b in blocks]
        at_b0 = [get(trained, t, b0) for t in steps]
        across_b, across_t = cka_matrix(at_t0, at_t0), cka_matrix(at_b0, at_b0)
        vs_random = cka_matrix(at_t0, [get(rand, t0, b) for b in blocks])
        labels_b, labels_t = [f"b{b}" for b in blocks], [f"t{t}" for t in steps]
        plot_cka(across_b.numpy(), labels_b, labels_b, folder / "cka_blocks.png", f"linear CKA across blocks, t={t0}")
        plot_cka(across_t.numpy(), labels_t, labels_t, folder / "cka_timesteps.png", f"linear CKA across t, b={b0}")
        plot_cka(vs_random.numpy(), labels_b, [f"r{b}" for b in blocks], folder / "cka_random.png",
                 f"linear CKA: trained (rows) vs random-init (columns), t={t0}")
        return {"images": len(rows), "pool": pool, "t": t0, "b": b0, "random_t": t0, "blocks": blocks,
                "timesteps": steps, "across_blocks": across_b.tolist(), "across_timesteps": across_t.tolist(),
                "vs_random": vs_random.tolist()}

    def report(self, result: Result, folder: str) -> list[str]:
        return [f"{result['images']} test images, features pooled {result['pool']}x{result['pool']} (exact CKA).", "",
                f"![across blocks]({folder}/cka_blocks.png)", "", f"![across timesteps]({folder}/cka_timesteps.png)", "",
                f"![against random init]({folder}/cka_random.png)", ""]
