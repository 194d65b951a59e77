"""DDPM: noise schedules, q(x_t | x_0), the reverse process, training losses and samplers."""

from .gaussian import GaussianDiffusion, beta_schedule
from .sampling import ddim_sample, ddpm_sample, sample

__all__ = ["GaussianDiffusion", "beta_schedule", "ddim_sample", "ddpm_sample", "sample"]
