"""The packages of difrep depend on each other top-down only: a lower layer never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import difrep

# lower number = lower layer; a module may import its own package and strictly lower layers
LAYERS = {
    "errors": 0,
    "utils": 1, "distributed": 1,
    "data": 2, "diffusion": 2,
    "models": 3,
    "features": 4,
    "heads": 5,
    "evaluation": 6,
    "engine": 7,
    "training": 8, "pretraining": 8, "dense": 8,
    "study": 10,
    "cli": 11,
}
ROOT = Path(difrep.__file__).parent


def _package(module: str) -> str:
    return module.split(".")[0]


def _imports(path: Path) -> list[str]:
    """The difrep packages a file imports, as names relative to difrep."""
    here = path.relative_to(ROOT).with_suffix("").parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - node.level])
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("difrep."):
                target = node.module[len("difrep."):]
            else:
                continue
            targets = [target] if target else [alias.name for alias in node.names]
            found += targets
        elif isinstance(node, ast.Import):
            found += [a.name[len("difrep."):] for a in node.names if a.name.startswith("difrep.")]
    return found


def test_every_package_has_a_layer():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert packages | modules == set(LAYERS), "give every new package a layer in LAYERS"


def test_no_package_imports_one_above_it():
    wrong = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if len(parts) == 1 and parts[0] == "__init__.py":
            continue  # the package's own front door re-exports from every layer
        source = _package(str(Path(*parts).with_suffix("")).replace("/", "."))
        for target in _imports(path):
            target_package = _package(target)
            if target_package != source and LAYERS[target_package] >= LAYERS[source]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target} ({source} may not use {target_package})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_relative_imports():
    """A guard on the parser itself: a known upward import would be caught."""
    stage = _imports(ROOT / "study" / "stages" / "train.py")
    assert any(_package(t) == "features" for t in stage) and any(_package(t) == "utils" for t in stage)
    assert any(_package(t) == "study" for t in stage), "a relative import within the package counts as its own"


def test_only_the_engine_and_the_probes_call_backward():
    """Anything else that trains is a Task on the engine, which owns precision, scaling, accumulation and
    clipping; the probes (evaluation/linear.py) keep their own short loops, the paper's protocol."""
    allowed = {Path("engine.py"), Path("evaluation", "linear.py")}
    callers = {path.relative_to(ROOT) for path in ROOT.rglob("*.py") if ".backward(" in path.read_text()}
    outside = sorted(str(path) for path in callers - allowed)
    assert not outside, f"backward() outside the engine and the probes: {outside}"
    assert callers == allowed, "the check no longer sees the engine's own backward()"
