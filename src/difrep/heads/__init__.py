"""Heads on frozen (or fine-tuned) diffusion features: linear, MLP, CNN, Attention, DifFormer, DifFeed."""

from .attention import AttentionHead, ClsTransformer, DifFormer, Tokenizer
from .difeed import DifFeed, Feedback, feedback_pairs
from .simple import CNNHead, LinearHead, MLPHead

__all__ = [
    "AttentionHead",
    "CNNHead",
    "ClsTransformer",
    "DifFeed",
    "Feedback",
    "DifFormer",
    "LinearHead",
    "MLPHead",
    "Tokenizer",
    "feedback_pairs",
]
