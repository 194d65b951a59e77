"""Optional dependencies (timm, diffusers, transformers), imported only when such a backbone is asked for."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UserError


def optional_import(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise UserError(f"{purpose} needs the optional package {package!r}, which is not installed "
                        f"({err}): pip install 'difrep[backbones]'") from err
