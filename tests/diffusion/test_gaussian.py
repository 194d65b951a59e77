"""The noise schedule and q(x_t | x_0), against guided-diffusion's NumPy implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difrep.diffusion import GaussianDiffusion


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1000, 250])
def test_schedule_matches_guided_diffusion(guided_diffusion, schedule, steps):
    import guided_diffusion.gaussian_diffusion as gd
    ref = gd.get_named_beta_schedule(schedule, steps)
    ours = GaussianDiffusion(steps, schedule)
    np.testing.assert_allclose(ours.betas.numpy(), ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), np.cumprod(1 - ref), rtol=1e-10)


def test_linear_schedule_endpoints_and_monotonicity():
    d = GaussianDiffusion(1000, "linear")
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    assert torch.all(d.alphas_cumprod[1:] < d.alphas_cumprod[:-1])


def test_q_sample_is_the_closed_form():
    d = GaussianDiffusion()
    x0, eps = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 150, 999])
    abar = torch.tensor([float(np.prod(1 - np.linspace(1e-4, 0.02, 1000)[: s + 1])) for s in t])
    expected = abar.sqrt()[:, None, None, None] * x0 + (1 - abar).sqrt()[:, None, None, None] * eps
    torch.testing.assert_close(d.q_sample(x0, t, eps), expected)


def test_q_sample_statistics_at_the_last_step_are_nearly_pure_noise():
    d = GaussianDiffusion()
    x_t = d.q_sample(torch.ones(4000, 3), 999)
    assert abs(x_t.mean().item()) < 0.05 and abs(x_t.std().item() - 1) < 0.05


def test_out_of_range_and_non_integer_steps_are_refused():
    d = GaussianDiffusion(1000)
    with pytest.raises(ValueError, match=r"\[-1, 1000\] out of range: valid noise steps are 0..999"):
        d.q_sample(torch.zeros(2, 3), torch.tensor([-1, 1000]))
    with pytest.raises(ValueError, match="must be integers"):
        d.q_sample(torch.zeros(1, 3), torch.tensor([1.5]))
    with pytest.raises(ValueError, match="noise_schedule='quadratic' is unknown"):
        GaussianDiffusion(1000, "quadratic")
