"""Is a generative model's output like its data? Two checks for models of grey, labelled data sets.

- :func:`channel_disagreement`: for grey data the channels of a sample must agree; the mean absolute
  difference between channel pairs measures colour casts (0 for the data, and for one-channel samples).
- :class:`ReferenceClassifier` and :func:`sample_recognition`: a small CNN trained on the data set's
  labels (:func:`difrep.training.reference.train_reference_classifier`, on the engine) names the class of
  each sample; samples that look like the data are named with high confidence about as often as real test
  images are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def channel_disagreement(images: torch.Tensor) -> float:
    """Mean over pixels and channel pairs of |c_i - c_j| for images [N, C, H, W] (in [-1, 1]); 0 for C = 1."""
    if images.ndim != 4:
        raise UserError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    channels = images.shape[1]
    pairs = [(i, j) for i in range(channels) for j in range(i + 1, channels)]
    if not pairs:
        return 0.0
    return float(torch.stack([(images[:, i] - images[:, j]).abs().mean() for i, j in pairs]).mean())


class ReferenceClassifier(nn.Module):
    """Two conv layers and two linear layers (about 0.4M parameters for 28x28): about 91% on Fashion-MNIST."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(),
                                        nn.Dropout(0.25), nn.Linear(128, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([F.softmax(self(images[i: i + batch_size].to(device)), dim=1).cpu()
                          for i in range(0, len(images), batch_size)])


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] grey levels: the channel mean, exact for grey images stored as RGB."""
    return images.mean(dim=1, keepdim=True) if images.shape[1] != 1 else images


@dataclass
class Recognition:
    """How a reference classifier sees a set of images."""

    confident_rate: float  # % named with probability >= threshold
    mean_confidence: float  # mean of the highest class probability (%)
    class_counts: list[int]  # how many images are named each class

    @classmethod
    def of(cls, probabilities: torch.Tensor, threshold: float) -> Recognition:
        top, names = probabilities.max(dim=1)
        counts = torch.bincount(names, minlength=probabilities.shape[1])
        return cls(100.0 * float((top >= threshold).float().mean()), 100.0 * float(top.mean()), counts.tolist())


def sample_recognition(classifier: ReferenceClassifier, samples: torch.Tensor, real: torch.Tensor,
                       threshold: float = 0.9) -> dict[str, Recognition]:
    """The classifier's view of generated ``samples`` and of ``real`` held-out images, side by side."""
    return {name: Recognition.of(classifier.probabilities(to_grey(images)), threshold)
            for name, images in (("samples", samples), ("real", real))}


def accuracy(classifier: ReferenceClassifier, images: torch.Tensor, labels: Iterable[int] | torch.Tensor) -> float:
    """Top-1 (%) of the reference classifier: a check that it learned the classes."""
    names = classifier.probabilities(to_grey(images)).argmax(dim=1)
    return 100.0 * float((names == torch.as_tensor(labels)).float().mean())
