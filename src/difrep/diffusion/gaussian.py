"""Noise schedules, q(x_t | x_0), the reverse process p(x_{t-1} | x_t) and the training losses.

The schedule is kept in float64 on the CPU, apart from any module, so that moving or casting a
model never changes the noising coefficients; each call casts the coefficient it needs, as
guided-diffusion does. A diffusion may be *respaced* to a subset of its steps for fast sampling:
it then keeps a ``timestep_map`` from its own step indices to the steps the model was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import UserError
from .losses import discretized_gaussian_nll, normal_kl

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def beta_schedule(name: str, num_timesteps: int) -> torch.Tensor:
    """The 'linear' (Ho et al., scaled to the step count) or 'cosine' (Nichol & Dhariwal) betas."""
    if num_timesteps < 1:
        raise UserError(f"diffusion_steps must be positive, got {num_timesteps}")
    if name == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if name == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise UserError(f"noise_schedule={name!r} is unknown: use 'linear' or 'cosine'")


def _flat_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


class GaussianDiffusion:
    """A discrete diffusion over ``num_timesteps`` integer steps t in [0, num_timesteps)."""

    def __init__(
        self,
        num_timesteps: int = 1000,
        schedule: str = "linear",
        betas: torch.Tensor | None = None,
        timestep_map: Sequence[int] | None = None,
    ) -> None:
        with torch.device("cpu"):  # never on the meta device of a model being built for a checkpoint
            self._build_tables(num_timesteps, schedule, betas, timestep_map)
        self._device_tables: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _build_tables(
        self, num_timesteps: int, schedule: str, betas: torch.Tensor | None, timestep_map: Sequence[int] | None
    ) -> None:
        self.schedule = schedule
        self.betas = beta_schedule(schedule, num_timesteps) if betas is None else betas.double().cpu()
        self.num_timesteps = len(self.betas)
        self.timestep_map = torch.tensor(
            list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map), dtype=torch.long
        )
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.alphas_cumprod_prev = prev
        self.sqrt_recip_alphas_cumprod = (1 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1 / self.alphas_cumprod - 1).sqrt()
        self.posterior_variance = self.betas * (1 - prev) / (1 - self.alphas_cumprod)
        # log(0) at t = 0 is replaced by the next step's variance, as in guided-diffusion
        variance = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        self.posterior_log_variance_clipped = variance.log()
        self.posterior_mean_coef1 = self.betas * prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1 - prev) * (1 - self.betas).sqrt() / (1 - self.alphas_cumprod)

    def respaced(self, steps: int | Sequence[int]) -> GaussianDiffusion:
        """The same process seen at fewer steps (evenly spaced, or the given original steps).

        Its betas are recomputed so that every kept step has the original alpha-bar; the model is
        still called with the original step numbers (``timestep_map``).
        """
        if isinstance(steps, int):
            if not 1 <= steps <= self.num_timesteps:
                raise UserError(f"sampling steps must be in 1..{self.num_timesteps}, got {steps}")
            kept = sorted({round(i * (self.num_timesteps - 1) / max(steps - 1, 1)) for i in range(steps)})
        else:
            kept = sorted({int(s) for s in self.validate_timesteps(list(steps))})
        abar = self.alphas_cumprod[kept]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return GaussianDiffusion(schedule=self.schedule, betas=1 - abar / prev,
                                 timestep_map=self.timestep_map[kept].tolist())

    def validate_timesteps(self, t: torch.Tensor | int | list[int]) -> torch.Tensor:
        """Integer steps as a tensor, with an error naming the valid range."""
        t = t if isinstance(t, torch.Tensor) else torch.tensor(t, device="cpu")
        if t.is_floating_point() or t.is_complex():
            raise UserError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.numel() and (t.min() < 0 or t.max() >= self.num_timesteps):
            bad = sorted({int(v) for v in t.flatten() if not 0 <= v < self.num_timesteps})
            raise UserError(
                f"timestep(s) {bad} out of range: valid noise steps are 0..{self.num_timesteps - 1}"
            )
        return t

    def coef(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` (one of the schedule's float64 tables) cast to ``like`` and shaped to broadcast over it.

        Steps on an accelerator index a copy of the table kept there, so that no call waits for the device."""
        if t.device.type != "cpu":
            key = (table.data_ptr(), t.device)
            if key not in self._device_tables:
                self._device_tables[key] = table.to(t.device)
            table = self._device_tables[key]
        coef = table[t].to(device=like.device, dtype=like.dtype)
        return coef.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, with fresh eps unless one is given.

        Steps given as host values are range-checked; a tensor already on an accelerator is not (the
        check would wait for the device on every call): the extractor, heads and CLI check theirs."""
        if not isinstance(t, torch.Tensor) or t.device.type == "cpu":
            t = self.validate_timesteps(t)
        if t.ndim == 0:
            t = t.expand(x0.shape[0])
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            self.coef(self.sqrt_alphas_cumprod, t, x0) * x0
            + self.coef(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self.coef(self.posterior_mean_coef1, t, x_t) * x0 + self.coef(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self.coef(self.posterior_variance, t, x_t), self.coef(self.posterior_log_variance_clipped, t, x_t)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.coef(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - self.coef(
            self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self.coef(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self.coef(
            self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """The step numbers the model was trained on, for this diffusion's step indices t."""
        return self.timestep_map.to(t.device)[t]

    def p_mean_variance(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: bool = True
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from the model's output: eps, plus (learned variance) the interpolation v.

        A learned variance is exp(v log beta_t + (1 - v) log beta~_t) with v = (out + 1) / 2 (Nichol &
        Dhariwal); otherwise the variance is fixed to beta_t ("fixedlarge", beta~_1 at t = 0).
        """
        channels = x_t.shape[1]
        if output.shape[1] == 2 * channels:
            eps, v = output.split(channels, dim=1)
            min_log = self.coef(self.posterior_log_variance_clipped, t, x_t)
            max_log = self.coef(self.betas.log(), t, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = log_variance.exp()
        elif output.shape[1] == channels:
            eps = output
            large = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
            variance = self.coef(large, t, x_t).expand_as(x_t)
            log_variance = self.coef(large.log(), t, x_t).expand_as(x_t)
        else:
            raise UserError(f"model output has {output.shape[1]} channels: expected {channels} or {2 * channels}")
        x0 = self.predict_x0(x_t, t, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_x0": x0, "eps": eps}

    def vb_terms_bpd(
        self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """One term of the variational bound, in bits per dimension: KL(q || p) for t > 0, the
        discretised decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        p = self.p_mean_variance(output, x_t, t, clip=False)
        kl = _flat_mean(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = _flat_mean(discretized_gaussian_nll(x0, p["mean"], 0.5 * p["log_variance"])) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, nll, kl)

    def training_losses(
        self, model: ModelFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-example losses: ``mse`` (L_simple, on eps) and, for a learned variance, ``vb`` (one term
        of L_vlb with the mean's gradient stopped), so that ``loss`` = L_simple + L_vlb / T, the
        hybrid objective of Nichol & Dhariwal (lambda = 0.001 at T = 1000)."""
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, self.model_t(t))
        channels = x0.shape[1]
        eps = output[:, :channels]
        terms = {"mse": _flat_mean((noise - eps.float()) ** 2)}
        if output.shape[1] == 2 * channels:
            frozen = torch.cat([eps.detach(), output[:, channels:]], dim=1).float()
            terms["vb"] = self.vb_terms_bpd(frozen, x0, x_t, t)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms
