"""Mask R-CNN on a :class:`~.pyramid.DetectionBackbone`: torchvision's detector with ViTDet's heads.

torchvision supplies the RPN, RoI heads, box coding, NMS and mask pasting; difrep supplies the backbone,
ViTDet's head shapes (two RPN convs, a box head of four convs and one fc, a mask head of four convs, all
LayerNorm), anchors and RoI poolers matched to the pyramid's p2..p6, the normalisation to [-1, 1] in the
detector's own transform, and anchor/RoI sampling that draws from per-image seeds: torchvision's sampler
uses the global RNG, which would make a batch's samples depend on the process holding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from ..data.loader import mix_seeds
from ..errors import UserError
from .pyramid import LEVEL_NAMES, DetectionBackbone, LayerNorm2d


@dataclass
class MaskRCNNConfig:
    name: str = "maskrcnn"
    out_channels: int = 256  # the pyramid's width
    channels: int | None = None  # a 1x1 conv maps the block to this width before the pyramid (None: keep it)
    rpn_convs: int = 2
    box_head: str = "conv"  # ViTDet's 4 convs + 1 fc with LayerNorm, or "mlp" (torchvision's two fcs)
    representation: int = 1024  # the box head's fc width
    mask_convs: int = 4
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_batch: int = 256  # anchors sampled per image for the RPN loss
    roi_batch: int = 512  # RoIs sampled per image for the box head
    rpn_post_nms_train: int = 2000
    rpn_post_nms_test: int = 1000
    score_threshold: float = 0.05
    detections_per_image: int = 100


class SeededSampler(BalancedPositiveNegativeSampler):
    """torchvision's positive/negative sampler, each image drawing from its own seed when seeds are set."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float, salt: int) -> None:
        super().__init__(batch_size_per_image, positive_fraction)
        self.salt = salt
        self.seeds: list[int] | None = None

    def __call__(self, matched_idxs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.seeds is None:
            return super().__call__(matched_idxs)
        if len(self.seeds) != len(matched_idxs):
            raise UserError(f"{len(self.seeds)} sampling seeds for a batch of {len(matched_idxs)} images")
        positives, negatives = [], []
        for seed, matched in zip(self.seeds, matched_idxs):
            with torch.random.fork_rng(devices=[matched.device] if matched.device.type == "cuda" else []):
                torch.manual_seed(mix_seeds(seed, self.salt))
                [pos], [neg] = super().__call__([matched])
            positives.append(pos)
            negatives.append(neg)
        return positives, negatives


def build_mask_rcnn(backbone: DetectionBackbone, num_classes: int, cfg: MaskRCNNConfig) -> MaskRCNN:
    """Mask R-CNN for ``num_classes`` object classes (plus the background) on ``backbone``'s pyramid."""
    if cfg.box_head not in ("conv", "mlp"):
        raise UserError(f"head.box_head={cfg.box_head!r}: use conv (ViTDet) or mlp (torchvision)")
    if len(cfg.anchor_sizes) != len(LEVEL_NAMES):
        raise UserError(f"head.anchor_sizes={cfg.anchor_sizes}: give one size per level p2..p6 ({len(LEVEL_NAMES)})")
    width = backbone.out_channels
    anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),) * len(LEVEL_NAMES))
    norm = LayerNorm2d
    box_head: nn.Module
    if cfg.box_head == "conv":
        box_head = FastRCNNConvFCHead((width, 7, 7), [width] * 4, [cfg.representation], norm_layer=norm)
    else:
        box_head = TwoMLPHead(width * 7 * 7, cfg.representation)
    model = MaskRCNN(
        backbone, min_size=backbone.detector_size, max_size=backbone.detector_size,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        rpn_anchor_generator=anchors, rpn_head=RPNHead(width, anchors.num_anchors_per_location()[0], cfg.rpn_convs),
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_train, rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
        rpn_batch_size_per_image=cfg.rpn_batch, box_batch_size_per_image=cfg.roi_batch,
        box_roi_pool=MultiScaleRoIAlign(list(LEVEL_NAMES[:4]), 7, 0),
        mask_roi_pool=MultiScaleRoIAlign(list(LEVEL_NAMES[:4]), 14, 0),
        box_head=box_head, box_predictor=FastRCNNPredictor(cfg.representation, num_classes + 1),
        mask_head=MaskRCNNHeads(width, [width] * cfg.mask_convs, 1, norm_layer=norm),
        mask_predictor=MaskRCNNPredictor(width, width, num_classes + 1),
        box_score_thresh=cfg.score_threshold, box_detections_per_img=cfg.detections_per_image,
    )
    model.rpn.fg_bg_sampler = SeededSampler(cfg.rpn_batch, 0.5, salt=1)
    model.roi_heads.fg_bg_sampler = SeededSampler(cfg.roi_batch, 0.25, salt=2)
    return model


def set_seeds(model: MaskRCNN, seeds: Sequence[int] | None) -> None:
    """The per-image seeds of the next batch: its noise and its anchor and RoI samples."""
    backbone: DetectionBackbone = model.backbone  # type: ignore[assignment]
    backbone.set_seeds(seeds)
    for sampler in (model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler):
        if isinstance(sampler, SeededSampler):
            sampler.seeds = None if seeds is None else list(seeds)
