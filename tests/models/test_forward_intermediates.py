"""forward_intermediates: stopping early, skip bookkeeping, feedback, errors and precisions."""

from __future__ import annotations

import pytest
import torch
from reference import randomize_

from difrep.models import create_model


def _run_counts(model):
    calls: dict[str, int] = {}
    for info in model.feature_info:
        module = model.get_submodule(info.module)
        module.register_forward_hook(lambda *_a, name=info.module: calls.__setitem__(name, calls.get(name, 0) + 1))
    model.out.register_forward_hook(lambda *_a: calls.__setitem__("out", calls.get("out", 0) + 1))
    return calls


@pytest.mark.parametrize("deepest", [3, 6, 7, 9, 12])
def test_stop_early_computes_nothing_after_the_deepest_block(deepest):
    model = create_model("adm", image_size=32, num_channels=32, channel_mult="1,2,2", num_res_blocks=1)
    calls = _run_counts(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.forward_intermediates(x, 5, indices=[2, deepest], stop_early=True)
    ran = {i.index for i in model.feature_info if calls.get(i.module)}
    assert ran == set(range(1, deepest + 1))
    assert "out" not in calls


def test_stop_early_features_equal_the_full_pass(unet_on, device):
    unet = unet_on
    x, t = torch.randn(2, 3, 32, 32, device=device), torch.tensor([3, 700], device=device)
    with torch.no_grad():
        full = unet.forward_intermediates(x, t)
        early = unet.forward_intermediates(x, t, indices=[19, 14, 8], stop_early=True)
    assert list(early) == [19, 14, 8], "features come back in the order asked for"
    for b, f in early.items():
        torch.testing.assert_close(f, full[b], rtol=0, atol=0)


def test_forward_equals_the_output_of_the_full_pass(unet_on, device):
    unet = unet_on
    x, t = torch.randn(2, 3, 32, 32, device=device), torch.tensor([0, 999], device=device)
    with torch.no_grad():
        eps = unet(x, t)
        eps2, _ = unet.forward_intermediates(x, t, indices=[1], intermediates_only=False)
    assert eps.shape == (2, 6, 32, 32)
    torch.testing.assert_close(eps, eps2, rtol=0, atol=0)


def test_feedback_adds_to_an_encoder_block_output(unet_on, device):
    unet = unet_on
    x, t = torch.randn(2, 3, 32, 32, device=device), 150
    target = 5
    info = unet.feature_info[target - 1]
    extra = torch.randn(2, info.num_chs, info.resolution, info.resolution, device=device)
    with torch.no_grad():
        base = unet.forward_intermediates(x, t, indices=[target, target + 1, 14])
        zero = unet.forward_intermediates(x, t, indices=[14], feedback={target: torch.zeros_like(extra)})
        fed = unet.forward_intermediates(x, t, indices=[target, 14], feedback={target: extra})
    torch.testing.assert_close(zero[14], base[14], rtol=0, atol=0)
    torch.testing.assert_close(fed[target], base[target] + extra)
    assert not torch.allclose(fed[14], base[14], atol=1e-3), "the addition must reach later blocks"
    with pytest.raises(ValueError, match="feedback targets must be encoder blocks"):
        unet.forward_intermediates(x, t, indices=[14], feedback={14: extra})


def test_invalid_blocks_and_labels_get_clear_errors(unet):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\[0, 99\] do not exist.*valid blocks are 1..19 \(encoder 1..9, middle 10, decoder 11..19\)"):
        unet.forward_intermediates(x, 1, indices=[0, 5, 99])
    with pytest.raises(ValueError, match="unconditional"):
        unet(x, 1, y=torch.tensor([3]))
    cond = create_model("adm", image_size=32, num_channels=32, channel_mult="1,2", class_cond=True, num_classes=10)
    with pytest.raises(ValueError, match="class-conditional: pass class labels y"):
        cond(x, 1)
    with pytest.raises(ValueError, match=r"timestep\(s\) \[1000\] out of range: valid noise steps are 0..999"):
        unet(x, 1000)
    with pytest.raises(ValueError, match="stop_early=True skips the output layer"):
        unet.forward_intermediates(x, 1, indices=[3], stop_early=True, intermediates_only=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_precisions_track_float32(unet_on, device, dtype):
    unet = unet_on
    x, t = torch.randn(2, 3, 32, 32, device=device), torch.tensor([90, 300], device=device)
    with torch.no_grad():
        ref = unet.forward_intermediates(x, t, indices=[8, 15], stop_early=True)
        with torch.autocast(device.type, dtype=dtype):
            low = unet.forward_intermediates(x, t, indices=[8, 15], stop_early=True)
    for b in ref:
        assert low[b].dtype == dtype
        rel = (low[b].float() - ref[b]).norm() / ref[b].norm()
        assert rel < 0.05, f"block {b}: relative error {rel:.3f} in {dtype}"


def test_model_cast_to_bfloat16_runs():
    model = randomize_(create_model("adm", image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x, 10)
        low = model.to(torch.bfloat16)(x.bfloat16(), 10)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).norm() / ref.norm() < 0.05


def test_a_one_channel_model_reads_rgb_images_as_their_grey_level(device):
    from difrep.errors import UserError
    from difrep.features import FeatureExtractor

    torch.manual_seed(0)
    grey_model = create_model("adm", image_size=28, in_channels=1, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                              attention_resolutions="14", learn_sigma=True).to(device)
    randomize_(grey_model)
    grey = torch.rand(2, 1, 28, 28, device=device) * 2 - 1
    colour = torch.cat([grey + 0.2, grey - 0.1, grey - 0.1], dim=1)  # channel mean = grey
    torch.testing.assert_close(grey_model.encode(grey.expand(-1, 3, -1, -1)), grey, rtol=0, atol=1e-7)
    torch.testing.assert_close(grey_model.encode(colour), grey)
    extractor = FeatureExtractor(grey_model, [50], [2, 5], noise="fixed", seed=0)
    a, b = extractor(grey.expand(-1, 3, -1, -1), [0, 1]), extractor(grey, [0, 1])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="reads 1-channel images.*2, 2, 28, 28"):
        grey_model.encode(grey.expand(-1, 2, -1, -1))
    rgb_model = create_model("adm", image_size=28, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                             attention_resolutions="14")
    with pytest.raises(UserError, match="reads 3-channel images"):
        rgb_model.encode(grey)
