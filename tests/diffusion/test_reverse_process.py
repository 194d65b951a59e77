"""The reverse process, losses, respacing and samplers: against guided-diffusion and against exact answers."""

from __future__ import annotations

import math

import pytest
import torch

from difrep.diffusion import GaussianDiffusion, ddim_sample, ddpm_sample


def _toy_model(channels_out: int = 6):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(channels_out, 3, 1, 1, generator=gen) * 0.5

    def model(x, t):
        return torch.nn.functional.conv2d(x, weight) + t.float()[:, None, None, None] / 1000

    return model


def _guided(steps: int = 1000, learned: bool = True):
    """guided-diffusion's GaussianDiffusion; callers request the ``guided_diffusion`` fixture, which
    skips (or fails, with DIFREP_REQUIRE_REFERENCE=1) when the reference is missing."""
    import guided_diffusion.gaussian_diffusion as gd

    var = gd.ModelVarType.LEARNED_RANGE if learned else gd.ModelVarType.FIXED_LARGE
    return gd, gd.GaussianDiffusion(betas=gd.get_named_beta_schedule("linear", steps),
                                    model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=var,
                                    loss_type=gd.LossType.MSE)


@pytest.mark.parametrize("learned", [True, False])
def test_p_mean_variance_matches_guided_diffusion(guided_diffusion, learned):
    _, ref = _guided(learned=learned)
    ours = GaussianDiffusion(1000, "linear")
    model = _toy_model(6 if learned else 3)
    x_t, t = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 10, 300, 998, 999])
    out = model(x_t, t)
    theirs = ref.p_mean_variance(lambda x, s: out, x_t, t, clip_denoised=True)
    mine = ours.p_mean_variance(out, x_t, t)
    for k_ref, k in (("mean", "mean"), ("variance", "variance"), ("log_variance", "log_variance"),
                     ("pred_xstart", "pred_x0")):
        torch.testing.assert_close(mine[k].expand_as(theirs[k_ref]).float(), theirs[k_ref].float(), rtol=1e-5, atol=1e-6)


def test_hybrid_loss_matches_guided_diffusion(guided_diffusion):
    """L_simple exactly; the VB term to the precision of guided-diffusion's approximate normal CDF."""
    _, ref = _guided()
    ours = GaussianDiffusion(1000, "linear")
    model = _toy_model()
    gen = torch.Generator().manual_seed(0)
    x0 = ((torch.rand(8, 3, 8, 8, generator=gen) * 2 - 1) * 127.5).round() / 127.5
    t, noise = torch.tensor([0, 1, 5, 100, 400, 700, 998, 999]), torch.randn(8, 3, 8, 8, generator=gen)
    theirs, mine = ref.training_losses(model, x0, t, noise=noise), ours.training_losses(model, x0, t, noise)
    torch.testing.assert_close(mine["mse"], theirs["mse"])
    torch.testing.assert_close(mine["vb"][1:], theirs["vb"][1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mine["vb"][:1], theirs["vb"][:1], rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(mine["loss"], mine["mse"] + mine["vb"])


def test_mean_gradient_of_the_vb_term_is_stopped():
    ours = GaussianDiffusion(1000, "linear")
    weight = torch.randn(6, 3, 1, 1, requires_grad=True)
    losses = ours.training_losses(lambda x, t: torch.nn.functional.conv2d(x, weight), torch.rand(4, 3, 4, 4) * 2 - 1,
                                  torch.tensor([3, 50, 500, 900]))
    (grad,) = torch.autograd.grad(losses["vb"].sum(), weight)
    assert grad[:3].abs().max() == 0 and grad[3:].abs().max() > 0


@pytest.mark.parametrize("steps", [250, 50, 10])
def test_respacing_keeps_alpha_bar_and_matches_guided_diffusion(guided_diffusion, steps):
    from guided_diffusion import gaussian_diffusion as gd
    from guided_diffusion.respace import SpacedDiffusion, space_timesteps

    base = GaussianDiffusion(1000, "linear")
    spaced = base.respaced(steps)
    kept = spaced.timestep_map
    assert len(kept) == steps and kept[0] == 0 and kept[-1] == 999
    torch.testing.assert_close(spaced.alphas_cumprod, base.alphas_cumprod[kept])
    ref = SpacedDiffusion(sorted(kept.tolist()), betas=gd.get_named_beta_schedule("linear", 1000),
                          model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.LEARNED_RANGE,
                          loss_type=gd.LossType.MSE)
    torch.testing.assert_close(spaced.betas, torch.from_numpy(ref.betas))
    if steps == 250:
        assert sorted(space_timesteps(1000, "250")) == kept.tolist()


def test_ddim_matches_guided_diffusion_from_the_same_start(guided_diffusion):
    gd, _ = _guided()
    from guided_diffusion.respace import SpacedDiffusion

    base = GaussianDiffusion(1000, "linear").respaced(20)
    ref = SpacedDiffusion(base.timestep_map.tolist(), betas=gd.get_named_beta_schedule("linear", 1000),
                          model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.LEARNED_RANGE,
                          loss_type=gd.LossType.MSE)
    model = _toy_model()
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    mine = ddim_sample(model, base, (4, 3, 4, 4), eta=0.0, generator=gen)
    theirs = ref.ddim_sample_loop(model, (4, 3, 4, 4), noise=start, clip_denoised=True, eta=0.0, device="cpu")
    torch.testing.assert_close(mine, theirs.float(), rtol=1e-4, atol=1e-4)


def _oracle(diffusion: GaussianDiffusion, scale: float, center: float):
    """The exact eps-prediction for data x0 ~ N(center, scale^2) i.i.d. per pixel."""

    def model(x, t):
        abar = diffusion.alphas_cumprod[t.cpu()].float()[:, None, None, None]
        x0 = center + scale**2 * abar.sqrt() * (x - abar.sqrt() * center) / (abar * scale**2 + 1 - abar)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    return model


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_with_an_exact_model_reproduce_the_data_distribution(sampler):
    base = GaussianDiffusion(1000, "linear")
    diffusion = base.respaced(1000 if sampler == "ddpm" else 100)
    model = _oracle(base, scale=0.3, center=0.2)
    gen = torch.Generator().manual_seed(0)
    shape = (200, 3, 4, 4)
    if sampler == "ddpm":
        x = ddpm_sample(model, diffusion, shape, generator=gen, clip=False)
    else:
        x = ddim_sample(model, diffusion, shape, generator=gen, clip=False)
    assert abs(x.mean().item() - 0.2) < 0.02
    assert abs(x.std().item() - 0.3) < 0.02, x.std()


def test_ddim_is_deterministic_and_ddpm_uses_its_generator():
    diffusion = GaussianDiffusion(1000, "linear").respaced(5)
    model = _toy_model()
    a = ddim_sample(model, diffusion, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    b = ddim_sample(model, diffusion, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = ddpm_sample(model, diffusion, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    d = ddpm_sample(model, diffusion, (2, 3, 4, 4), generator=torch.Generator().manual_seed(2))
    assert not torch.equal(c, d)


def test_respacing_refuses_bad_step_counts():
    base = GaussianDiffusion(1000, "linear")
    with pytest.raises(ValueError, match="sampling steps must be in 1..1000"):
        base.respaced(0)
    with pytest.raises(ValueError, match="out of range"):
        base.respaced([10, 1000])
    assert math.isclose(base.respaced(1).alphas_cumprod[0].item(), base.alphas_cumprod[0].item())
