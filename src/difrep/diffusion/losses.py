"""Gaussian KL and the discretised Gaussian likelihood of 8-bit images, for the variational bound."""

from __future__ import annotations

import torch


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log P(x) in nats, elementwise, for x in [-1, 1] quantised to 256 bins of width 2/255 under
    N(mean, exp(log_scale)^2); the two end bins take the tails."""
    inv_std = torch.exp(-log_scale)
    upper = torch.special.ndtr((x - mean + 1 / 255) * inv_std)
    lower = torch.special.ndtr((x - mean - 1 / 255) * inv_std)
    tiny = 1e-12
    log_cdf_upper = torch.log(upper.clamp(min=tiny))
    log_one_minus_lower = torch.log((1 - lower).clamp(min=tiny))
    log_mid = torch.log((upper - lower).clamp(min=tiny))
    log_probs = torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_lower, log_mid))
    return -log_probs
