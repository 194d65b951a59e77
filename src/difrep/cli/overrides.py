"""Model flag overrides from the command line, in guided-diffusion's style: ``--num_channels 64``.

For timm:/diffusers:/sd: backbones the flags are the family's options (``--image_size 224``,
``--mean 0,0,0``, ``--learnable_text true``, timm's own ``--depth 2``), typed as YAML reads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import Any

import yaml

from ..errors import UserError
from ..models import PRESETS
from ..models.registry import BACKBONE_FAMILIES


def _pairs(extra: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``--key value`` and ``--key=value`` pairs."""
    items = list(extra)
    while items:
        key = items.pop(0)
        if not key.startswith("--"):
            raise UserError(f"unexpected argument {key!r}: model flags are given as --flag value")
        key, _, value = key[2:].partition("=")
        if not value:
            if not items:
                raise UserError(f"--{key} needs a value")
            value = items.pop(0)
        yield key, value


def parse_model_flags(model: str, extra: Sequence[str]) -> dict[str, Any]:
    """Turn ``['--image_size', '64', '--learn_sigma', 'true']`` into typed overrides for ``model``."""
    if model.partition(":")[0] + ":" in BACKBONE_FAMILIES:
        return {key: _yaml_value(value) for key, value in _pairs(extra)}
    if model not in PRESETS:
        raise UserError(f"unknown model {model!r}: available models are {', '.join(sorted(PRESETS))}, or a name "
                        f"with a prefix ({', '.join(BACKBONE_FAMILIES)})")
    defaults = {f.name: getattr(PRESETS[model].config, f.name) for f in fields(PRESETS[model].config)}
    out: dict[str, Any] = {}
    for key, value in _pairs(extra):
        if key not in defaults:
            raise UserError(f"unknown model flag --{key}: valid flags are {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise UserError(f"--{key} takes true or false, got {value!r}")
            out[key] = value.lower() in ("true", "1")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _yaml_value(value: str) -> Any:
    """``224`` -> 224, ``true`` -> True, ``0,0,0`` -> [0, 0, 0]."""
    parts = [yaml.safe_load(v) for v in value.split(",")]
    return parts if len(parts) > 1 else parts[0]
