"""Samplers: DDPM ancestral sampling and DDIM, both on any number of (respaced) steps.

The model is called as ``model(x_t, t)`` with the step numbers it was trained on; a learned
variance (6 output channels for RGB) is used by DDPM and ignored by DDIM.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .gaussian import GaussianDiffusion, ModelFn


def _start(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    return torch.randn(*shape, generator=generator).to(device)


def _reverse_steps(diffusion: GaussianDiffusion, batch: int, device: torch.device | str, desc: str,
                   progress: bool) -> Iterator[tuple[int, torch.Tensor]]:
    """(i, t) from the last step down to 0, t the step of every image as a tensor on ``device``."""
    for i in tqdm(range(diffusion.num_timesteps - 1, -1, -1), desc=desc, disable=not progress):
        yield i, torch.full((batch,), i, dtype=torch.long, device=device)


@torch.no_grad()
def ddpm_sample(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    clip: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling x_T -> x_0 through p(x_{t-1} | x_t); no noise is added at the last step."""
    x = _start(shape, generator, device)
    for i, t in _reverse_steps(diffusion, shape[0], device, "DDPM", progress):
        out = diffusion.p_mean_variance(model(x, diffusion.model_t(t)).float(), x, t, clip=clip)
        x = out["mean"]
        if i > 0:
            x = x + out["variance"].sqrt() * _start(shape, generator, device)
    return x


@torch.no_grad()
def ddim_sample(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    clip: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM (Song et al.): deterministic for eta = 0, DDPM-like noise for eta = 1."""
    x = _start(shape, generator, device)
    for i, t in _reverse_steps(diffusion, shape[0], device, "DDIM", progress):
        output = model(x, diffusion.model_t(t)).float()
        eps = output[:, : shape[1]]
        x0 = diffusion.predict_x0(x, t, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = diffusion.predict_eps(x, t, x0)
        abar = diffusion.coef(diffusion.alphas_cumprod, t, x)
        abar_prev = diffusion.coef(diffusion.alphas_cumprod_prev, t, x)
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        x = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).sqrt() * eps
        if i > 0 and eta > 0:
            x = x + sigma * _start(shape, generator, device)
    return x


def sample(
    model: torch.nn.Module,
    num: int,
    steps: int = 100,
    method: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """``num`` images in [-1, 1] from an unconditional ADM U-Net, with ``steps`` respaced steps."""
    if method not in ("ddpm", "ddim"):
        raise UserError(f"method={method!r}: use 'ddpm' or 'ddim'")
    if not hasattr(getattr(model, "config", None), "learn_sigma"):
        raise UserError(f"difrep samples from ADM U-Nets (guided-diffusion's), not from a {type(model).__name__}")
    if getattr(model, "num_classes", None) is not None:
        raise UserError("this model is class-conditional: difrep samples unconditional models only")
    diffusion = model.diffusion.respaced(steps)
    generator = torch.Generator().manual_seed(seed)
    size, channels = model.image_size, model.config.in_channels
    batches = []
    for start in range(0, num, batch_size):
        shape = (min(batch_size, num - start), channels, size, size)
        if method == "ddpm":
            batches.append(ddpm_sample(model, diffusion, shape, generator, device, progress=progress))
        else:
            batches.append(ddim_sample(model, diffusion, shape, eta, generator, device, progress=progress))
    return torch.cat(batches)
