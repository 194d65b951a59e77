"""A study's YAML file: what it studies (data, model), the stages it runs and the findings it judges.

Top-level sections (``configs/studies/*.yaml``; a file may name a ``base`` file whose sections it overrides)::

    title, description    the report's heading and scope sentence (templates allowed)
    out                   the study folder
    seeds                 the seeds of every stage that trains (mean +- std over them)
    data                  name, root, train_per_class, test_per_class, val_fraction, and what the stages read
    model                 name, checkpoint (null: the shipped weights), flags (a timm:/diffusers:/sd: backbone's
                          options), random_seed (the random-init copy's)
    vars                  named values the stages read as ${vars.NAME} (what a command-line alias sets)
    run                   progress, workers, chunk_size, shard_size, batch_size: how, never what, is computed
    stages                name -> {kind: ..., settings}, run in the order written
    findings              the paper's claims, each a comparison of the stages' numbers

A string ``${stage.key}`` anywhere in a stage's settings is replaced by that earlier stage's choice
(``chosen``) or result field; ``${vars.x}``, ``${data.x}``, ``${model.x}`` and ``${out}`` read the study's own
sections. A whole-string template keeps the value's type (``"${sweep.T}"`` is a list).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..utils.config import read_options

TEMPLATE = re.compile(r"\$\{([A-Za-z_][\w-]*)\.([\w.]+)\}")
RUN_DEFAULTS: dict[str, Any] = {"progress": True, "workers": 0, "chunk_size": 64, "shard_size": 5000,
                                "batch_size": 256}
DATA_DEFAULTS: dict[str, Any] = {"name": "fashion-mnist", "root": None, "train_per_class": None,
                                 "test_per_class": None, "val_fraction": 0.1}
MODEL_DEFAULTS: dict[str, Any] = {"name": "adm-fmnist-28", "checkpoint": None, "flags": {}, "random_seed": 0}
SECTIONS = ("title", "description", "out", "seeds", "data", "model", "vars", "run", "stages", "findings")


@dataclass
class StudySpec:
    """A study file, read and checked; ``source`` names it in error messages."""

    title: str
    out: str
    stages: dict[str, dict[str, Any]]
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    data: dict[str, Any] = field(default_factory=lambda: dict(DATA_DEFAULTS))
    model: dict[str, Any] = field(default_factory=lambda: dict(MODEL_DEFAULTS))
    vars: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=lambda: dict(RUN_DEFAULTS))
    findings: list[dict[str, Any]] = field(default_factory=list)
    source: str = "<study>"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SECTIONS}


def _section(data: dict[str, Any], name: str, defaults: dict[str, Any], where: str, open_: bool = False) -> dict[str, Any]:
    given = data.get(name) or {}
    if not isinstance(given, dict):
        raise UserError(f"{where}: {name} must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown and not open_:
        raise UserError(f"{where}: unknown {name} option(s) {unknown}; valid: {', '.join(sorted(defaults))}")
    return {**defaults, **given}


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read a study file with ``section.option=value`` overrides (``stages.sweep.timesteps=[5,50]``)."""
    where = str(path)
    data = read_options(path, list(overrides))
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise UserError(f"{where}: unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    for required in ("title", "out", "stages"):
        if not data.get(required):
            raise UserError(f"{where}: '{required}' is missing")
    stages = data["stages"]
    if not isinstance(stages, dict) or not all(isinstance(s, dict) and "kind" in s for s in stages.values()):
        raise UserError(f"{where}: stages must map each stage's name to its settings, each with a 'kind'")
    for name in stages:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(name)):
            raise UserError(f"{where}: stage name {name!r}: use lower-case letters, digits and _")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    findings = data.get("findings") or []
    if not isinstance(findings, list) or not all(isinstance(f, dict) and "kind" in f and "claim" in f for f in findings):
        raise UserError(f"{where}: findings must be a list, each with a 'kind' and a 'claim'")
    return StudySpec(title=str(data["title"]), out=str(data["out"]), stages=stages,
                     description=str(data.get("description", "")), seeds=seeds,
                     data=_section(data, "data", DATA_DEFAULTS, where, open_=True),
                     model=_section(data, "model", MODEL_DEFAULTS, where),
                     vars=dict(data.get("vars") or {}), run=_section(data, "run", RUN_DEFAULTS, where),
                     findings=findings, source=where)


def substitute(value: Any, lookup: Any, where: str) -> Any:
    """``value`` with every ``${scope.key}`` replaced by ``lookup(scope, key, where)``."""
    if isinstance(value, dict):
        return {k: substitute(v, lookup, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup, where) for v in value]
    if not isinstance(value, str):
        return value
    whole = TEMPLATE.fullmatch(value)
    if whole:
        return lookup(whole[1], whole[2], where)
    return TEMPLATE.sub(lambda m: _text(lookup(m[1], m[2], where)), value)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "{" + ", ".join(str(v) for v in value) + "}"
    return str(value)


def references(value: Any) -> set[str]:
    """The scopes (stage names among them) that ``value``'s templates read."""
    if isinstance(value, dict):
        return set().union(*(references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(references(v) for v in value)) if value else set()
    return {m[1] for m in TEMPLATE.finditer(value)} if isinstance(value, str) else set()
