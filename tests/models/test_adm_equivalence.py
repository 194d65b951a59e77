"""Our ADM implementation against guided-diffusion's, with the same random weights.

Every parameter is randomised (ADM zero-initialises residual branches, which would hide errors),
so a wrong attention head split, scale-shift norm or skip order changes the outputs.
"""

from __future__ import annotations

import pytest
import torch
from reference import GD_DEFAULTS, gd_unet, randomize_

from difrep.models import create_model
from difrep.models.checkpoint import load_state_dict_strict

CONFIGS = {
    # the paper's backbone in miniature: legacy attention order, head channels, AdaGN, BigGAN updown
    "legacy-headch-updown": dict(
        channel_mult="1,2,2", attention_resolutions="16,8", num_head_channels=8,
        resblock_updown=True, learn_sigma=True,
    ),
    # new attention order, fixed head count, additive embedding, conv resampling, class labels
    "new-order-cond-conv": dict(
        channel_mult="1,2,3", attention_resolutions="16,8", num_heads=4, use_new_attention_order=True,
        use_scale_shift_norm=False, class_cond=True, num_res_blocks=1, dropout=0.1,
    ),
    # parameter-free resampling and a different head count in the decoder
    "pool-resample-heads-up": dict(
        channel_mult="1,2", attention_resolutions="32,16", num_heads=2, num_heads_upsample=4,
        conv_resample=False, num_res_blocks=3,
    ),
    # one input channel (grey data, as the shipped model): 2 output channels with the learned variance
    "grey-learned-sigma": dict(
        in_channels=1, channel_mult="1,2", attention_resolutions="16", num_head_channels=16, resblock_updown=True,
        learn_sigma=True,
    ),
}


def _ours_from_gd(gd_model, flags):
    ours_flags = {k: v for k, v in flags.items() if k not in ("use_checkpoint", "use_fp16")}
    ours = create_model("adm", **ours_flags)
    load_state_dict_strict(ours, gd_model.state_dict(), source="guided-diffusion model")
    return ours.eval()


def _block_outputs(gd_model):
    modules = list(gd_model.input_blocks) + [gd_model.middle_block] + list(getattr(gd_model, "output_blocks", []))
    captured: dict[int, torch.Tensor] = {}
    for b, module in enumerate(modules, start=1):
        module.register_forward_hook(lambda _m, _i, out, b=b: captured.__setitem__(b, out))
    return captured


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_matches_guided_diffusion(guided_diffusion, name):
    flags = {**GD_DEFAULTS, **CONFIGS[name]}
    torch.manual_seed(0)
    gd_model = randomize_(gd_unet(**flags)).eval()
    ours = _ours_from_gd(gd_model, flags)

    x = torch.randn(3, flags.get("in_channels", 3), 32, 32)
    t = torch.tensor([0, 417, 999])
    y = torch.tensor([1, 7, 999]) if flags["class_cond"] else None
    captured = _block_outputs(gd_model)
    with torch.no_grad():
        ref = gd_model(x, t, y=y)
        eps, feats = ours.forward_intermediates(x, t, y=y, intermediates_only=False)

    assert ref.abs().mean() > 0.1, "the reference output is degenerate"
    torch.testing.assert_close(eps, ref, rtol=1e-4, atol=1e-4)
    assert sorted(feats) == sorted(captured) == list(range(1, ours.num_blocks + 1))
    for b, ref_b in captured.items():
        torch.testing.assert_close(feats[b], ref_b, rtol=1e-4, atol=1e-4, msg=lambda m, b=b: f"block {b}: {m}")


@pytest.mark.parametrize("name", ["legacy-headch-updown", "new-order-cond-conv"])
def test_unet_gradients_match_guided_diffusion(guided_diffusion, name):
    """Fine-tuning backpropagates through difrep's in-place fast paths: the gradients of every weight and
    of the input equal guided-diffusion's (an in-place op that autograd needed would raise or differ)."""
    flags = {**GD_DEFAULTS, **CONFIGS[name], "dropout": 0.0}
    torch.manual_seed(0)
    gd_model = randomize_(gd_unet(**flags)).train()
    ours = _ours_from_gd(gd_model, flags).train()
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([3, 700])
    y = torch.tensor([5, 11]) if flags["class_cond"] else None
    grads = []
    for model in (gd_model, ours):
        xi = x.clone().requires_grad_()
        (model(xi, t, y=y) ** 2).mean().backward()
        grads.append({"input": xi.grad, **{k: p.grad for k, p in model.named_parameters()}})
    assert grads[0]["input"].abs().max() > 0
    for key, ref in grads[0].items():
        torch.testing.assert_close(grads[1][key], ref, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("pool", ["attention", "adaptive"])
def test_classifier_encoder_matches_guided_diffusion(guided_diffusion, pool):
    torch.manual_seed(0)
    gd_model = guided_diffusion.create_classifier(
        image_size=64, classifier_use_fp16=False, classifier_width=64, classifier_depth=1,
        classifier_attention_resolutions="16,8", classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True, classifier_pool=pool,
    )
    randomize_(gd_model).eval()
    ours = create_model(
        "adm-64-classifier", num_channels=64, num_res_blocks=1, attention_resolutions="16,8",
        num_head_channels=64, pool=pool,
    )
    load_state_dict_strict(ours, gd_model.state_dict())
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([10, 600])
    captured = _block_outputs(gd_model)
    with torch.no_grad():
        ref = gd_model(x, t)
        logits, feats = ours.forward_intermediates(x, t, intermediates_only=False)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    assert logits.shape == (2, 1000)
    for b, ref_b in captured.items():
        torch.testing.assert_close(feats[b], ref_b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "preset, gd_flags",
    [
        ("adm-256-uncond", dict(image_size=256, num_channels=256, attention_resolutions="32,16,8",
                                num_head_channels=64, resblock_updown=True, learn_sigma=True)),
        ("adm-256-cond", dict(image_size=256, num_channels=256, attention_resolutions="32,16,8",
                              num_head_channels=64, resblock_updown=True, learn_sigma=True, class_cond=True)),
        ("adm-64-cond", dict(image_size=64, num_channels=192, num_res_blocks=3, attention_resolutions="32,16,8",
                             num_head_channels=64, resblock_updown=True, learn_sigma=True, class_cond=True,
                             use_new_attention_order=True, dropout=0.1)),
        ("adm-128-cond", dict(image_size=128, num_channels=256, attention_resolutions="32,16,8",
                              num_heads=4, resblock_updown=True, learn_sigma=True, class_cond=True)),
        ("adm-512-cond", dict(image_size=512, num_channels=256, attention_resolutions="32,16,8",
                              num_head_channels=64, resblock_updown=True, learn_sigma=True, class_cond=True)),
    ],
)
def test_presets_have_the_public_checkpoints_keys(guided_diffusion, preset, gd_flags):
    """The public checkpoints are guided-diffusion state dicts: same keys and shapes, built on meta."""
    with torch.device("meta"):
        ref = guided_diffusion.create_model(**{**GD_DEFAULTS, **gd_flags})
        ours = create_model(preset)
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert ours_shapes == ref_shapes


@pytest.mark.parametrize("size, depth", [(64, 4), (128, 2), (256, 2), (512, 2)])
def test_classifier_presets_have_the_public_checkpoints_keys(guided_diffusion, size, depth):
    with torch.device("meta"):
        ref = guided_diffusion.create_classifier(
            image_size=size, classifier_use_fp16=False, classifier_width=128, classifier_depth=depth,
            classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
            classifier_resblock_updown=True, classifier_pool="attention",
        )
        ours = create_model(f"adm-{size}-classifier")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
