"""Safe, strict loading of checkpoints into difrep models.

``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle that would run
code is refused. ``.safetensors`` files are read with safetensors. Loading is strict: every
missing, unexpected or mis-shaped key is reported by name with the shape the model expects.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError


class CheckpointError(UserError):
    """A checkpoint file that cannot be read, or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors from a ``.pt``/``.pth`` or ``.safetensors`` file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({err})") from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"checkpoint {path}: refused, it holds pickled objects other than tensors, which "
                f"could run code when loaded. Convert it to safetensors from a trusted environment. "
                f"({str(err).splitlines()[0]})"
            ) from err
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
            raise CheckpointError(f"checkpoint {path}: cannot be read, truncated or not a PyTorch file ({err})") from err
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, or one nested under 'state_dict'/'model'/'ema' by a trainer."""
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "ema"):
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: expected a state dict of tensors, got {type(state).__name__}")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _hint(model: nn.Module, missing: list[str], unexpected: list[str]) -> str:
    hints = []
    if "label_emb.weight" in unexpected:
        hints.append("the checkpoint is class-conditional: use a '-cond' preset or class_cond=True")
    if "label_emb.weight" in missing:
        hints.append("the checkpoint is unconditional: use an '-uncond' preset or class_cond=False")
    if any(k.startswith("output_blocks.") for k in missing) and not any(
        k.startswith("output_blocks.") for k in unexpected
    ):
        hints.append("the checkpoint has no decoder: it looks like a classifier, use a '-classifier' preset")
    return "".join(f"\n  hint: {h}" for h in hints)


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint", assign: bool = False
) -> None:
    """Copy ``state`` into ``model``, failing with every offending key named before anything is copied.

    ``assign`` adopts the tensors instead of copying them (for a model built on the meta device).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model expects {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        for title, items in (
            ("missing keys", [f"{k} (expected shape {tuple(expected[k].shape)})" for k in missing]),
            ("unexpected keys", [f"{k} {tuple(state[k].shape)}" for k in unexpected]),
            ("shape mismatches", mis_shaped),
        ):
            if items:
                shown = items[:10] + ([f"... and {len(items) - 10} more"] if len(items) > 10 else [])
                lines.append(f"  {len(items)} {title}:\n    " + "\n    ".join(shown))
        raise CheckpointError("\n".join(lines) + _hint(model, missing, unexpected))
    if assign:
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def load_checkpoint(model: nn.Module, path: str | Path, assign: bool = False) -> None:
    """Read ``path`` safely and load it strictly into ``model``."""
    load_state_dict_strict(model, read_state_dict(path), source=f"checkpoint {path}", assign=assign)
