"""FeatureExtractor against a direct, one-(t, b)-at-a-time computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import randomize_

from difrep import FeatureExtractor, create_model
from difrep.features import image_seed, per_image_noise

IDX = list(range(5))


@pytest.fixture()
def images(device):
    return (torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)


def _direct(model, images, t, b, indices, seed=0, draws=1):
    """One U-Net pass per (image batch, t, draw), full model, nothing folded."""
    feats = []
    for k in range(draws):
        eps = torch.stack([
            torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(image_seed(seed, i, k)))
            for i in indices
        ]).to(images.device)
        x_t = model.diffusion.q_sample(images, torch.full((len(images),), t), eps)
        with torch.no_grad():
            feats.append(model.forward_intermediates(x_t, t, indices=[b])[b])
    return torch.stack(feats).mean(0)


def test_features_equal_the_direct_computation(unet_on, images):
    ex = FeatureExtractor(unet_on, timesteps=[90, 150, 300], blocks=[6, 10, 14], chunk_size=4)
    out = ex(images, indices=IDX)
    assert sorted(out) == sorted((t, b) for t in (90, 150, 300) for b in (6, 10, 14))
    for (t, b), f in out.items():
        assert f.dtype == torch.float32
        torch.testing.assert_close(f, _direct(unet_on, images, t, b, range(5)), rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_batching_order_or_chunks(unet_on, images):
    ex = FeatureExtractor(unet_on, timesteps=[50, 400], blocks=[12], chunk_size=64)
    whole = ex(images, indices=list(range(5)))
    perm = [3, 0, 4, 1, 2]
    shuffled = ex(images[perm], indices=perm)
    ex.chunk_size = 1
    halves = [ex(images[:2], indices=[0, 1]), ex(images[2:], indices=[2, 3, 4])]
    # oneDNN picks convolution kernels by batch size, so float32 round-off (seen: 1.2e-5) differs with the
    # batching; a wrong noise or image assignment would differ by O(1)
    for key, f in whole.items():
        torch.testing.assert_close(shuffled[key], f[perm], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.cat([h[key] for h in halves]), f, rtol=1e-4, atol=1e-4)


def test_pooling_and_noise_averaging(unet_on, images):
    full = FeatureExtractor(unet_on, timesteps=[200], blocks=[15], num_noise_draws=3, seed=7)(images, indices=IDX)
    pooled = FeatureExtractor(unet_on, timesteps=[200], blocks=[15], num_noise_draws=3, seed=7, pool=2)(images, indices=IDX)
    torch.testing.assert_close(full[(200, 15)], _direct(unet_on, images, 200, 15, range(5), seed=7, draws=3),
                               rtol=1e-5, atol=1e-5)
    assert pooled[(200, 15)].shape == (5, unet_on.feature_info[14].num_chs, 2, 2)
    torch.testing.assert_close(pooled[(200, 15)], F.adaptive_avg_pool2d(full[(200, 15)], 2), rtol=1e-5, atol=1e-6)


def test_fixed_noise_repeats_and_fresh_noise_does_not(unet_on, images):
    fixed = FeatureExtractor(unet_on, timesteps=[500], blocks=[5])
    fresh = FeatureExtractor(unet_on, timesteps=[500], blocks=[5], noise="fresh")
    torch.testing.assert_close(fixed(images, indices=IDX)[(500, 5)], fixed(images, indices=IDX)[(500, 5)], rtol=0, atol=0)
    assert not torch.allclose(fresh(images)[(500, 5)], fresh(images)[(500, 5)])
    other_seed = FeatureExtractor(unet_on, timesteps=[500], blocks=[5], seed=1)
    assert not torch.allclose(fixed(images, indices=IDX)[(500, 5)], other_seed(images, indices=IDX)[(500, 5)])


def test_per_image_noise_depends_only_on_the_index():
    a = per_image_noise((3, 4, 4), [10, 11, 12], seed=3, num_draws=2)
    b = per_image_noise((3, 4, 4), [12, 10], seed=3, num_draws=2)
    torch.testing.assert_close(a[2], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[0], b[1], rtol=0, atol=0)
    assert not torch.allclose(a[0, 0], a[0, 1]) and not torch.allclose(a[0], a[1])
    assert abs(per_image_noise((3, 64, 64), range(4)).std().item() - 1) < 0.02


def test_extraction_stops_at_the_deepest_block(unet_on, images):
    seen = set()
    hooks = [unet_on.get_submodule(i.module).register_forward_hook(lambda *_a, b=i.index: seen.add(b))
             for i in unet_on.feature_info]
    try:
        FeatureExtractor(unet_on, timesteps=[10, 20], blocks=[3, 13])(images, indices=IDX)
    finally:
        for h in hooks:
            h.remove()
    assert seen == set(range(1, 14))


def test_gradients_only_when_asked(unet_on, images):
    x = images.clone().requires_grad_(True)
    assert not FeatureExtractor(unet_on, timesteps=[5], blocks=[4])(x, indices=IDX)[(5, 4)].requires_grad
    out = FeatureExtractor(unet_on, timesteps=[5], blocks=[4], requires_grad=True)(x, indices=IDX)[(5, 4)]
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bfloat16_extraction_tracks_float32(unet_on, images):
    ref = FeatureExtractor(unet_on, timesteps=[150], blocks=[14])(images, indices=IDX)[(150, 14)]
    low = FeatureExtractor(unet_on, timesteps=[150], blocks=[14], dtype=torch.bfloat16)(images, indices=IDX)[(150, 14)]
    assert low.dtype == torch.float32
    assert (low - ref).norm() / ref.norm() < 0.05


def test_class_conditional_backbone_takes_labels(device):
    model = randomize_(create_model("adm", image_size=32, num_channels=32, channel_mult="1,2",
                                    num_res_blocks=1, class_cond=True, num_classes=10)).to(device)
    x, y = (torch.rand(2, 3, 32, 32) * 2 - 1).to(device), torch.tensor([1, 2], device=device)
    ex = FeatureExtractor(model, timesteps=[10, 20], blocks=[4])
    assert not torch.allclose(ex(x, [0, 1], y=y)[(10, 4)], ex(x, [0, 1], y=torch.tensor([3, 4], device=device))[(10, 4)])


def test_classifier_encoder_plugs_in(device):
    enc = create_model("adm-64-classifier", image_size=32, num_channels=64, channel_mult="1,2",
                       num_res_blocks=1, attention_resolutions="16").to(device)
    out = FeatureExtractor(enc, timesteps=[30], blocks=[enc.num_blocks], pool=1)(
        torch.zeros(2, 3, 32, 32, device=device), indices=[0, 1])
    assert out[(30, enc.num_blocks)].shape == (2, 128, 1, 1)


def test_bad_requests_are_refused_with_the_valid_range(unet_on, images):
    with pytest.raises(ValueError, match=r"\[1000\] out of range: valid noise steps are 0..999"):
        FeatureExtractor(unet_on, timesteps=[150, 1000], blocks=[3])
    with pytest.raises(ValueError, match=r"\[40\] do not exist in this model: valid blocks are 1..19"):
        FeatureExtractor(unet_on, timesteps=[150], blocks=[40])
    with pytest.raises(ValueError, match=r"images must be \[N, C, 32, 32\]"):
        FeatureExtractor(unet_on, timesteps=[150], blocks=[3])(torch.zeros(1, 3, 64, 64), indices=[0])
    with pytest.raises(ValueError, match="got 2 indices for 5 images"):
        FeatureExtractor(unet_on, timesteps=[150], blocks=[3])(images, indices=[0, 1])


def test_fixed_noise_needs_the_images_indices(unet_on, images):
    """Without indices every batch would reuse the noise of images 0..N-1: refused, with what to pass."""
    with pytest.raises(ValueError, match=r"pass.*indices=|indices=\.\.\."):
        FeatureExtractor(unet_on, timesteps=[150], blocks=[3])(images)
    fresh = FeatureExtractor(unet_on, timesteps=[150], blocks=[3], noise="fresh")
    assert fresh(images)[(150, 3)].shape[0] == 5


def test_given_noise_is_used_as_is(unet_on, images):
    """A trainer passes its own draws: x_t must be built from exactly that noise."""
    eps = per_image_noise(images.shape[1:], [9, 8, 7, 6, 5], seed=4).to(images.device)
    ex = FeatureExtractor(unet_on, timesteps=[300], blocks=[6], seed=4)
    torch.testing.assert_close(ex(images, noise=eps)[(300, 6)], ex(images, indices=[9, 8, 7, 6, 5])[(300, 6)],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="noise must be"):
        ex(images, noise=eps[:2])


def test_extraction_never_reads_device_values_back(unet):
    """On the meta device any host read-back (a sync on a GPU: t.min(), .item(), .cpu()) raises; the
    extractor's forward, the model's embedding and q_sample must not need one."""
    import copy

    model = copy.deepcopy(unet).to("meta")
    images = torch.empty(3, 3, 32, 32, device="meta")
    out = FeatureExtractor(model, timesteps=[90, 150], blocks=[4, 12])(images, indices=[0, 1, 2])
    assert out[(150, 12)].device.type == "meta" and out[(150, 12)].shape[0] == 3
    t = torch.full((3,), 150, device="meta")
    assert model.diffusion.q_sample(images, t, torch.empty_like(images)).device.type == "meta"
    assert model.forward_intermediates(images, t, indices=[4])[4].device.type == "meta"


def test_per_image_noise_on_a_device_depends_only_on_the_index(device):
    a = per_image_noise((3, 4, 4), [10, 11], seed=3, device=device)
    b = per_image_noise((3, 4, 4), [11], seed=3, device=device)
    assert a.device.type == device.type
    torch.testing.assert_close(a[1], b[0], rtol=0, atol=0)


def test_channels_last_and_compiled_extraction_match_the_default(unet, device):
    import copy

    import torch._dynamo

    images = torch.rand(3, 3, 32, 32, device=device) * 2 - 1
    model = copy.deepcopy(unet).to(device)
    plain = FeatureExtractor(model, [90, 300], [6, 14], pool=2)(images, indices=[0, 1, 2])
    last = FeatureExtractor(copy.deepcopy(model), [90, 300], [6, 14], pool=2, channels_last=True)
    assert last.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = FeatureExtractor(model, [90, 300], [6, 14], pool=2, compile="eager")
    for other in (last(images, indices=[0, 1, 2]), compiled(images, indices=[0, 1, 2])):
        for key in plain:
            torch.testing.assert_close(other[key], plain[key], rtol=1e-4, atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "dynamo traced nothing"
