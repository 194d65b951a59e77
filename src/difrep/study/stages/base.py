"""The stage interface: one job, declared settings, a JSON result, a report section and the scores findings read."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...errors import UserError
from ...utils.files import atomic_write
from ..context import StudyContext

Result = dict[str, Any]


@dataclass(frozen=True)
class Score:
    """A number a finding compares: its label and its values over seeds (one value when nothing is seeded)."""

    label: str
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float:
        return mean_std(self.values)[1]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean over seeds and their sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def memo(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON result, saved at ``path``; read back instead of recomputed once it exists."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(result, indent=2)))
    return result


class Stage:
    """A step of a study. Subclasses set ``kind``, ``defaults`` (every setting and its default) and ``title``,
    and implement :meth:`run`; ``trains`` marks stages whose runs repeat over the study's seeds."""

    kind: ClassVar[str]
    title: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    trains: ClassVar[bool] = False

    def __init__(self, name: str, settings: dict[str, Any], source: str) -> None:
        given = {k: v for k, v in settings.items() if k not in ("kind", "title")}
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise UserError(f"{source}: stage {name!r} ({self.kind}): unknown setting(s) {unknown}; valid: "
                            f"{', '.join(sorted(self.defaults)) or 'none'}")
        self.name = name
        self.source = source
        self.heading = settings.get("title") or self.title
        self.raw = {**self.defaults, **given}
        self.settings: dict[str, Any] = dict(self.raw)  # with templates resolved, set by the runner

    def where(self, option: str) -> str:
        """How an error names one of this stage's options."""
        return f"{self.source}: stages.{self.name}.{option}"

    def run(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result:
        raise NotImplementedError

    def partial(self, ctx: StudyContext, folder: Path, seeds: list[int]) -> Result | None:
        """What a stage cut short has finished, for the report, computing nothing; None: nothing to show."""
        return None

    def depends(self) -> dict[str, Any]:
        """What the results depend on beyond the settings (a config file's content)."""
        return {}

    def report(self, result: Result, folder: str) -> list[str]:
        """Markdown lines of this stage's section (figures linked relative to the study folder, ``folder/...``)."""
        return []

    def score(self, result: Result, selector: str, metric: str | None) -> Score | None:
        """The score a finding names ``stage/selector[:metric]``; None when this result has no such number."""
        raise UserError(f"{self.source}: stage {self.name!r} ({self.kind}) has no scores to compare")

    def choice(self, result: Result) -> dict[str, Any]:
        """What later stages read as ``${name.key}``."""
        return result.get("chosen", {})


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *["| " + " | ".join(str(x) for x in row) + " |" for row in rows], ""]
