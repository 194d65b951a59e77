"""The study runner: every study is a YAML file of stages (``configs/studies/``), run in order into one folder.

Each stage's result is kept in ``OUT/<stage>/result.json`` with the key (a hash) of everything it depends on: its
settings with every template resolved, the data, the studied weights and, for stages that train, the seeds. A
rerun reads back a stage whose key is unchanged; a changed setting reruns that stage and the stages whose
resolved settings it changes, nothing else. A stage's folder made under another key is kept aside as
``OUT/<stage>@<key>`` and read back if that key comes again. Inside a stage, work is kept at a fine grain (a
cache shard, a probe cell, an engine run), so a study cut short continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..utils.files import atomic_write
from .context import StudyContext, digest
from .findings import Judge
from .report import write_report
from .spec import StudySpec, load_study, references, substitute
from .stages import KINDS
from .stages.base import Result, Stage

PLACES = {("data", "root"), ("data", "fashion_root"), ("model", "checkpoint")}  # where things are, not what they are


def make_stage(name: str, settings: dict[str, Any], source: str) -> Stage:
    kind = settings.get("kind")
    if kind not in KINDS:
        raise UserError(f"{source}: stage {name!r}: unknown kind {kind!r}; use {', '.join(sorted(KINDS))}")
    return KINDS[kind](name, settings, source)


class Study:
    """A study file's stages over one folder."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.ctx = StudyContext(spec)
        self.out = self.ctx.out
        self.stages = {name: make_stage(name, settings, spec.source) for name, settings in spec.stages.items()}
        order = list(self.stages)
        for name, stage in self.stages.items():
            for scope in references(stage.raw):
                if scope in ("vars", "data", "model", "out"):
                    continue
                if scope not in self.stages:
                    raise UserError(f"{spec.source}: stage {name!r} reads ${{{scope}...}}, which is not a stage")
                if order.index(scope) >= order.index(name):
                    raise UserError(f"{spec.source}: stage {name!r} reads stage {scope!r}, which comes after it")
        self.results: dict[str, Result] = {}
        self.keys: dict[str, str] = {}

    # ----- settings and keys
    def _lookup(self, scope: str, key: str, where: str) -> Any:
        if scope == "out":
            return str(self.out)
        if scope in ("vars", "data", "model"):
            section = getattr(self.spec, scope)
            if key not in section:
                raise UserError(f"{self.spec.source}: {where}: ${{{scope}.{key}}}: {scope} has no {key!r}")
            return section[key]
        choice = self.stages[scope].choice(self.result(scope))
        source = choice if key in choice else self.result(scope)
        value: Any = source
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise UserError(f"{self.spec.source}: {where}: ${{{scope}.{key}}}: stage {scope!r} has no {key!r} "
                                f"(it offers {', '.join(choice) or 'nothing'})")
            value = value[part]
        return value

    def _lookup_for_key(self, scope: str, key: str, where: str) -> Any:
        if (scope, key) in PLACES:
            return f"${{{scope}.{key}}}"
        return self._lookup(scope, key, where)

    def resolve(self, name: str) -> str:
        """Resolve a stage's templates (running the stages they read) and return its key."""
        if name not in self.keys:
            stage = self.stages[name]
            stage.settings = substitute(stage.raw, self._lookup, f"stages.{name}")
            # a key says what was computed, not where the data or weights lie: those templates stay unresolved in it
            keyed = substitute(stage.raw, self._lookup_for_key, f"stages.{name}")
            # settings at their defaults are left out: a new setting whose default keeps today's behaviour keeps the keys
            changed = {k: v for k, v in keyed.items() if k not in stage.defaults or v != stage.defaults[k]}
            depends = {"kind": stage.kind, "settings": changed, **self.ctx.identity(),
                       **stage.depends()}
            if stage.trains:
                depends["seeds"] = self.spec.seeds
            self.keys[name] = digest(depends)
        return self.keys[name]

    # ----- running
    def folder(self, name: str) -> Path:
        return self.out / name

    def stored(self, name: str) -> Result | None:
        """The stage's result if its folder holds one under the current key (moving folders aside as needed)."""
        key, folder = self.resolve(name), self.folder(name)
        path = folder / "result.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return saved
            aside = self.out / f"{name}@{saved.get('key', 'old')}"
            if aside.exists():
                shutil.rmtree(aside)
            folder.rename(aside)
        aside = self.out / f"{name}@{key}"
        if aside.is_dir() and not folder.exists():
            aside.rename(folder)
            return self.stored(name)
        return None

    def result(self, name: str) -> Result:
        if name not in self.results:
            saved = self.stored(name)
            self.results[name] = (saved or self._compute(name))["result"]
        return self.results[name]

    def _compute(self, name: str) -> dict[str, Any]:
        stage, folder = self.stages[name], self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"[study] {name} ({stage.kind}) ...", flush=True)
        began = time.perf_counter()
        result = stage.run(self.ctx, folder, self.spec.seeds)
        record = {"stage": name, "kind": stage.kind, "key": self.keys[name], "settings": stage.settings,
                  "seconds": time.perf_counter() - began, "result": result}
        atomic_write(folder / "result.json", lambda p: p.write_text(json.dumps(record, indent=2)))
        print(f"[study] {name}: done in {record['seconds']:.0f}s", flush=True)
        return record

    def run(self, only: list[str] | None = None) -> dict[str, Result]:
        """Run (or read back) the stages, ``only`` these if given (and what they read); write the report."""
        unknown = sorted(set(only or []) - set(self.stages))
        if unknown:
            raise UserError(f"--stages: unknown stage(s) {unknown}; {self.spec.source} has {', '.join(self.stages)}")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "study.yaml").write_text(yaml.safe_dump(self.spec.to_dict(), sort_keys=False))
        for name in self.stages:
            if only is None or name in only:
                self.result(name)
        partial: dict[str, Result] = {}
        for name, stage in self.stages.items():  # stages this call left alone: finished earlier, or cut short
            reads = references(stage.raw) & set(self.stages)
            if name in self.results or not reads <= set(self.results):
                continue
            if (saved := self.stored(name)) is not None:
                self.results[name] = saved["result"]
            elif (done := stage.partial(self.ctx, self.folder(name), self.spec.seeds)) is not None:
                partial[name] = done
        seconds = {name: json.loads((self.folder(name) / "result.json").read_text())["seconds"]
                   for name in self.stages if name in self.results}
        shown = {**self.results, **partial}
        findings = Judge(self.stages, shown, self.spec.source).all(self.spec.findings)
        description = substitute(self.spec.description, self._lookup, "description")
        write_report(self.out, self.spec, description, self.stages, shown, set(partial), findings, seconds, self.keys)
        return self.results


def run_study(path: str | Path, overrides: list[str] | tuple[str, ...] = (), only: list[str] | None = None) -> Study:
    """Run (or continue) the study file ``path`` with ``section.option=value`` overrides."""
    study = Study(load_study(path, overrides))
    study.run(only)
    return study
