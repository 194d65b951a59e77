"""The forward (noising) process of DDPM, as used by guided-diffusion."""

from .gaussian import GaussianDiffusion, beta_schedule

__all__ = ["GaussianDiffusion", "beta_schedule"]
