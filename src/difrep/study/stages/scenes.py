"""The ``scenes`` stage: Fashion-MNIST scenes of the training garments that no model trains on, the held-out
data a dense study chooses its settings on (``difrep data make-scenes``, another seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ...data.scenes import make_scenes
from ..context import StudyContext
from .base import Result, Stage


class ScenesStage(Stage):
    kind = "scenes"
    title = "Held-out scenes"
    defaults: ClassVar[dict[str, Any]] = {"fashion_root": None, "split": "train", "count": 100, "seed": 1}

    def run(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result:
        s = self.settings
        make_scenes(s["fashion_root"] or ctx.data_root, folder / "scenes", s["split"], s["count"], seed=s["seed"])
        return {"chosen": {"root": str(folder / "scenes")}, "count": s["count"], "split": s["split"]}

    def report(self, result: Result, folder: str) -> list[str]:
        return [f"{result['count']} scenes of {result['split']} garments, drawn with another seed: "
                f"`{folder}/scenes` (regenerated, not committed).", ""]
