"""Noise schedules and q(x_t | x_0).

The schedule is kept in float64 on the CPU, apart from any module, so that moving or casting a
model never changes the noising coefficients; each call casts the coefficient it needs, as
guided-diffusion does.
"""

from __future__ import annotations

import math

import torch


def beta_schedule(name: str, num_timesteps: int) -> torch.Tensor:
    """The 'linear' (Ho et al., scaled to the step count) or 'cosine' (Nichol & Dhariwal) betas."""
    if num_timesteps < 1:
        raise ValueError(f"diffusion_steps must be positive, got {num_timesteps}")
    if name == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if name == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"noise_schedule={name!r} is unknown: use 'linear' or 'cosine'")


class GaussianDiffusion:
    """A discrete diffusion over ``num_timesteps`` integer steps t in [0, num_timesteps)."""

    def __init__(self, num_timesteps: int = 1000, schedule: str = "linear") -> None:
        self.num_timesteps = num_timesteps
        self.schedule = schedule
        self.betas = beta_schedule(schedule, num_timesteps)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()

    def validate_timesteps(self, t: torch.Tensor | int | list[int]) -> torch.Tensor:
        """Integer steps as a tensor, with an error naming the valid range."""
        t = t if isinstance(t, torch.Tensor) else torch.tensor(t, device="cpu")
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.numel() and (t.min() < 0 or t.max() >= self.num_timesteps):
            bad = sorted({int(v) for v in t.flatten() if not 0 <= v < self.num_timesteps})
            raise ValueError(
                f"timestep(s) {bad} out of range: valid noise steps are 0..{self.num_timesteps - 1}"
            )
        return t

    def _coef(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        coef = table[t.cpu()].to(device=like.device, dtype=like.dtype)
        return coef.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, with fresh eps unless one is given."""
        t = self.validate_timesteps(t)
        if t.ndim == 0:
            t = t.expand(x0.shape[0])
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            self._coef(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._coef(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )
