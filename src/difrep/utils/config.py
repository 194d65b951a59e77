"""Config files for every command: dataclass sections, YAML files, and ``section.option=value`` overrides.

A schema is a dataclass whose fields are section dataclasses with defaults. Missing options keep their
defaults (a section's own default instance wins over its class's), unknown options and values of the
wrong type are refused with the option's full name. A file may start from another with
``base: other.yaml`` (relative to the file): its options are read first, then the file's own replace
them section by section, so configs that differ in one section (the data set, say) state only that.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import MissingFileError, UserError


def _check_type(value: Any, default: Any, where: str) -> Any:
    """Values must have their default's type (an int is accepted for a float); None defaults take anything."""
    if default is None or value is None and not isinstance(default, (list, dict)):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"option {where}: expected {type(default).__name__}, got {value!r}")
    return value


def _build(cls: type, data: Any, where: str, defaults: Any = None) -> Any:
    """``defaults`` (a ``cls`` instance) supplies what ``data`` leaves out; a section's own default
    (``PretrainConfig.model`` names 'adm', say) wins over its class's."""
    if not isinstance(data, dict):
        raise UserError(f"section {where.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(where + k for k in unknown)}: valid are "
                         f"{', '.join(where + k for k in sorted(known))}")
    defaults = cls() if defaults is None else defaults
    kwargs = {}
    for name, value in data.items():
        current = getattr(defaults, name)
        if is_dataclass(current):
            kwargs[name] = _build(type(current), value or {}, f"{where}{name}.", current)
        else:
            kwargs[name] = _check_type(value, current, where + name)
    return replace(defaults, **kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override {text!r} must look like section.option=value (e.g. optim.lr=0.01)")
    key, value = text.split("=", 1)
    return key.split("."), yaml.safe_load(value)


def read_options(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The raw options of a YAML config (its base chain included) with ``section.option=value`` overrides
    applied, before any schema: a command reads ``task`` here to choose the schema."""
    data = {} if path is None else _read(Path(path), ())
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...], schema: type) -> Any:
    """Read a YAML config (missing options keep their defaults) and apply ``section.option=value`` overrides.

    ``schema`` is the dataclass of sections (``TrainConfig`` for heads, ``PretrainConfig`` for diffusion)."""
    return _build(schema, read_options(path, overrides), "")


def _read(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A YAML file's options, with those of its ``base`` chain underneath."""
    if not path.is_file():
        raise MissingFileError(f"config {path}: no such file" + (f" (the base of {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        raise UserError(f"config {path}: its base chain loops back to it")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"config {path}: expected a mapping of sections")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(f"config {path}: base must name one YAML file, got {base!r}")
    return merge_options(_read(path.parent / base, (*chain, path.resolve())), data)


def merge_options(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``under``, section by section (a mapping in both is merged, anything else replaced)."""
    merged = dict(under)
    for key, value in over.items():
        merged[key] = merge_options(under[key], value) if isinstance(value, dict) and isinstance(under.get(key), dict) else value
    return merged


def config_from_dict(data: dict[str, Any], schema: type) -> Any:
    """A config from its ``to_dict()`` form (as saved in checkpoints), checked like a YAML file."""
    return _build(schema, data, "")
