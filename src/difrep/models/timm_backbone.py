"""Any timm model as a difrep backbone, through timm's own ``forward_intermediates``.

Blocks are timm's ``feature_info`` entries numbered from 1, without a stem entry: for ResNet-50,
b = 1..4 are layer1..layer4 (the stem ``act1`` is not numbered); for ViT, b = 1..12 are the
transformer blocks. These are the paper's numberings (Table 15). Features are NCHW maps (ViT's patch
tokens as a grid, prefix tokens dropped). Weights come from a local file only.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .backbone import Backbone, BlockInfo
from .checkpoint import CheckpointError, read_state_dict
from .optional import optional_import

_STEM_MODULES = ("act1", "bn1", "conv1", "stem", "conv_stem")


def _is_stem(module: str) -> bool:
    return module in _STEM_MODULES or module.startswith("stem.")


class TimmBackbone(Backbone):
    """A timm model serving its intermediate features; it takes no noise step (t is ignored).

    ``mean``/``std`` default to the model's pretrained configuration; pass ``mean=(0, 0, 0),
    std=(1, 1, 1)`` for weights trained on unnormalised [0, 1] images (converted SimCLR ResNet-50s).
    ``image_size`` defaults to the model's own input size; for ViTs it also sets timm's ``img_size``.
    Other keyword arguments go to ``timm.create_model`` (e.g. ``depth``, ``embed_dim`` for tiny tests).
    """

    def __init__(self, name: str, checkpoint: str | Path | None = None, image_size: int | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 **timm_kwargs: Any) -> None:
        super().__init__()
        timm = optional_import("timm", f"the timm backbone {name!r}")
        if name not in timm.list_models():
            raise UserError(f"timm has no model {name!r} (timm.list_models() lists them)")
        if image_size is not None and "img_size" not in timm_kwargs and _takes_img_size(timm, name):
            timm_kwargs["img_size"] = image_size
        try:
            self.net = timm.create_model(name, pretrained=False, **timm_kwargs)
        except TypeError as err:
            raise UserError(f"timm model {name!r} does not accept these options {sorted(timm_kwargs)}: {err}") from err
        if not hasattr(self.net, "forward_intermediates"):
            raise UserError(f"timm model {name!r} has no forward_intermediates, so difrep cannot number its blocks")
        self.name, self.timm_kwargs = name, dict(timm_kwargs)
        cfg = self.net.pretrained_cfg
        self.image_size = int(image_size or timm_kwargs.get("img_size") or _own_size(self.net) or cfg["input_size"][-1])
        self.mean = tuple(float(v) for v in (mean if mean is not None else cfg.get("mean", (0.5, 0.5, 0.5))))
        self.std = tuple(float(v) for v in (std if std is not None else cfg.get("std", (0.5, 0.5, 0.5))))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserError(f"mean and std need 3 values (std > 0), got mean={self.mean} std={self.std}")
        info = list(self.net.feature_info)
        self._offset = 1 if len(info) > 1 and _is_stem(info[0]["module"]) else 0
        self._blocks = [
            BlockInfo(i + 1 - self._offset, f"net.{f['module']}", "encoder", int(f["num_chs"]), int(f["reduction"]),
                      self.image_size // int(f["reduction"]))
            for i, f in enumerate(info) if i >= self._offset
        ]
        self._num_encoder_blocks = len(self._blocks)
        if checkpoint is not None:
            self.load_weights(checkpoint)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def load_weights(self, path: str | Path) -> None:
        """Load a local weight file: timm's, torchvision's or MAE's (``{"model": ...}``) key layout.

        Every tensor the features use must be present with the right shape; the classifier and final
        norm may be missing, and keys the model lacks (MAE's decoder) are skipped with a warning.
        """
        state = read_state_dict(path)
        filter_fn = getattr(sys.modules[type(self.net).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, self.net)
        own = self.net.state_dict()
        mismatched = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
                      for k, v in state.items() if k in own and v.shape != own[k].shape]
        if mismatched:
            raise CheckpointError(f"checkpoint {path} does not fit timm model {self.name!r}: "
                                  + "; ".join(mismatched[:5]) + (" ..." if len(mismatched) > 5 else ""))
        optional = tuple(f"{m}." for m in (self.net.pretrained_cfg.get("classifier") or "head", "norm", "fc_norm",
                                             "head_drop", "fc"))
        missing = [k for k in own if k not in state and not k.startswith(optional)]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {len(missing)} tensor(s) of timm model {self.name!r}, "
                                  f"e.g. {', '.join(missing[:5])}: is it the weights of another model?")
        unexpected = [k for k in state if k not in own]
        if unexpected:
            warnings.warn(f"checkpoint {path}: {len(unexpected)} tensor(s) that {self.name!r} has no use for were "
                          f"skipped (e.g. {', '.join(unexpected[:3])})", UserWarning, stacklevel=3)
        self.net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images to [0, 1], then the model's mean/std normalisation."""
        return ((images + 1) / 2 - self._mean.to(images)) / self._std.to(images)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int | None = None,
        indices: list[int] | None = None,
        stop_early: bool = False,
        intermediates_only: bool = True,
        **ignored: Any,
    ) -> dict[int, torch.Tensor]:
        """Activations after blocks b (keyed by b, in the order asked for); ``t`` is ignored."""
        if not intermediates_only:
            raise UserError("timm backbones serve features: call forward_intermediates with intermediates_only=True")
        blocks = self.validate_blocks(range(1, self.num_blocks + 1) if indices is None else indices)
        taken = sorted({b - 1 + self._offset for b in blocks})
        feats = self.net.forward_intermediates(x, indices=taken, stop_early=stop_early, intermediates_only=True,
                                               output_fmt="NCHW")
        by_block = {i + 1 - self._offset: f for i, f in zip(taken, feats)}
        return {b: by_block[b] for b in blocks}

    def prune_intermediate_layers(self, indices: list[int]) -> int:
        """Drop every stage after the deepest of ``indices``, the final norm and the classifier (timm's)."""
        last = max(self.validate_blocks(indices))
        self.net.prune_intermediate_layers(sorted({b - 1 + self._offset for b in indices}), prune_norm=True,
                                           prune_head=True)
        self._blocks = self._blocks[:last]
        self._pruned_after = last
        return last

    def random_copy(self) -> TimmBackbone:
        return TimmBackbone(self.name, None, self.image_size, self.mean, self.std, **self.timm_kwargs).to(self._mean.device)

    def describe(self) -> dict[str, Any]:
        return {"type": "timm", "name": self.name, "options": self.timm_kwargs, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std)}


def _takes_img_size(timm: Any, name: str) -> bool:
    """Whether the model is built for one input size (ViT-like: it has a patch embedding)."""
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False)
    return hasattr(probe, "patch_embed")


def _own_size(net: torch.nn.Module) -> int | None:
    size = getattr(getattr(net, "patch_embed", None), "img_size", None)
    return int(size[0]) if size is not None else None
