"""Pretraining text-free diffusion models: unconditional DDPM training of ADM U-Nets."""

from .config import PretrainConfig
from .trainer import EMA, Pretrainer, StepBatches, pretrain

__all__ = ["EMA", "PretrainConfig", "Pretrainer", "StepBatches", "pretrain"]
