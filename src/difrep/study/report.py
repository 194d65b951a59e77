"""One report for every study: ``report.md`` (the findings table, each stage's section with the findings it tests,
the time each stage took) and ``results.json`` (every stage's result and every verdict)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .findings import Finding
from .spec import StudySpec
from .stages.base import Result, Stage, table


def _findings_table(tested: list[Finding]) -> list[str]:
    return table(["finding of the paper", "held here?", "evidence"], [[f.claim, f.verdict, f.evidence] for f in tested])


def write_report(out: Path, spec: StudySpec, description: str, stages: dict[str, Stage], results: dict[str, Result],
                 partial: set[str], findings: list[Finding], seconds: dict[str, float], keys: dict[str, str]) -> Path:
    """``out/report.md`` and ``out/results.json`` from the stages' results; ``partial`` names stages cut short, whose
    finished part is shown as such; stages with nothing to show are listed as not run yet."""
    lines = [f"# {spec.title}", ""]
    if description:
        lines += [description.strip(), ""]
    lines += ["## Findings", ""]
    lines += _findings_table(findings) if findings else ["None of the stages run so far tests a finding.", ""]
    for name, stage in stages.items():
        if name not in results:
            continue
        lines += [f"## {stage.heading or name} (`{name}`)", ""]
        if name in partial:
            lines += ["**Not finished**: the runs done so far (`difrep study` with the same file continues).", ""]
        lines += stage.report(results[name], name)
        mine = [f for f in findings if f.stage == name]
        if mine and len(mine) < len(findings):  # the whole table above already says it otherwise
            lines += ["What this tests of the paper's findings:", "", *_findings_table(mine)]
    missing = [name for name in stages if name not in results]
    if missing:
        lines += [f"Stages not run yet: {', '.join(missing)} (`difrep study` with the same file continues).", ""]
    lines += ["## Time", "", *table(["stage", "seconds of computing"], [[k, f"{v:.0f}"] for k, v in seconds.items()])]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    summary: dict[str, Any] = {"title": spec.title, "findings": [asdict(f) for f in findings],
                               "stages": {name: {"kind": stages[name].kind, "key": keys.get(name), "finished": name not in partial,
                                                 "result": r} for name, r in results.items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return path
