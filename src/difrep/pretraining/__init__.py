"""Pretraining text-free diffusion models: unconditional DDPM training of ADM U-Nets."""

from .config import PretrainConfig
from .trainer import EMA, DiffusionPretrainingTask, StepBatches, pretrain

__all__ = ["EMA", "DiffusionPretrainingTask", "PretrainConfig", "StepBatches", "pretrain"]
