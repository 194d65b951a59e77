"""Feature pictures: the PCA colouring and the x_t they show beside it."""

from __future__ import annotations

import pytest
import torch

from difrep import FeatureExtractor, create_model
from difrep.features.noise import noise_for_batch
from difrep.features.pictures import feature_pictures, noised_inputs, pca_rgb


@pytest.fixture(scope="module")
def grey_model():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random weights"):
        return create_model("adm-fmnist-28")


def _two_regions(device, seed=0):
    """[1, 16, 8, 8]: feature vector u + small noise on the left half, v + small noise on the right."""
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    maps = 0.05 * torch.randn(1, 16, 8, 8, generator=gen)
    maps[0, :, :, :4] += u[:, None, None]
    maps[0, :, :, 4:] += v[:, None, None]
    return maps.to(device)


def test_pca_separates_two_regions(device):
    rgb = pca_rgb(_two_regions(device))
    assert rgb.shape == (1, 3, 8, 8) and rgb.device.type == device.type
    assert rgb.min() >= 0 and rgb.max() <= 1
    left, right = rgb[0, :, :, :4].flatten(1), rgb[0, :, :, 4:].flatten(1)
    assert left[0].max() < right[0].min() or right[0].max() < left[0].min()
    assert (left.mean(1) - right.mean(1)).norm() > 0.5


def test_pca_sign_is_fixed_by_the_largest_loading(device):
    noise = 0.1 * torch.randn(2, 5, 6, 6, generator=torch.Generator().manual_seed(1))
    ramp = torch.linspace(-3, 3, 72)
    for channel in range(5):  # eigh returns some of these components negated (channels 1-3 here)
        maps = noise.clone()
        maps[:, channel] += ramp.reshape(2, 6, 6)  # the first component is this channel
        red = pca_rgb(maps.to(device))[:, 0].flatten()
        order = maps[:, channel].flatten().argsort()
        assert red[order[0]] == 0 and red[order[-1]] == 1, channel  # red grows with the channel


def test_pca_uses_the_fit_and_pads_few_channels(device):
    maps = _two_regions(device)
    other = torch.randn(3, 16, 4, 4, generator=torch.Generator().manual_seed(5)).to(device)
    torch.testing.assert_close(pca_rgb(maps, fit=maps), pca_rgb(maps))
    assert (pca_rgb(maps, fit=other) - pca_rgb(maps)).abs().max() > 0.1
    two = pca_rgb(maps[:, :2])
    assert two.shape == (1, 3, 8, 8) and (two[:, 2] == 0).all() and two[:, :2].std() > 0.1


def test_shown_x_t_is_the_extractors_own_input(grey_model, device, monkeypatch):
    model = grey_model.to(device)
    images = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1).to(device)
    indices, steps = [7, 3, 11], [10, 200]
    seen = []
    original = model.forward_intermediates
    monkeypatch.setattr(model, "forward_intermediates",
                        lambda x, t, **kw: seen.append((x.clone(), t.clone())) or original(x, t, **kw))
    FeatureExtractor(model, steps, [4], noise="fixed", seed=3, chunk_size=64)(images, indices=indices)
    x_seen, t_seen = seen[0]
    shown = noised_inputs(model, images, indices, steps, seed=3)
    eps = noise_for_batch(images, indices, 3, 1, "")[:, 0]
    for i, t in enumerate(steps):
        torch.testing.assert_close(shown[t], x_seen[i::2], rtol=0, atol=1e-6)
        assert (t_seen[i::2] == t).all()
        torch.testing.assert_close(shown[t], model.diffusion.q_sample(images, t, eps), rtol=0, atol=0)
    assert (shown[10] - shown[200]).abs().max() > 0.5 and (shown[10] - images).abs().max() > 0


def test_pictures_are_at_image_size_and_grey_inputs_stay_grey(grey_model, device):
    model = grey_model.to(device)
    images = (torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(4)) * 2 - 1).to(device)
    inputs, pictures, sizes = feature_pictures(model, images, [0, 1], [50], [4, 10], seed=0)
    assert sizes == {4: (14, 14), 10: (7, 7)}
    assert inputs[50].shape == (2, 1, 28, 28) and 0 <= inputs[50].min() and inputs[50].max() <= 1
    assert sorted(pictures) == [(50, 4), (50, 10)]
    for picture in pictures.values():
        assert picture.shape == (2, 3, 28, 28) and 0 <= picture.min() and picture.max() <= 1
    blocky = pictures[(50, 10)][0, 0]
    torch.testing.assert_close(blocky[:4, :4], blocky[0, 0].expand(4, 4), rtol=0, atol=0)  # nearest, 7 -> 28


def test_backbone_without_noise_step_shows_the_clean_image(device):
    pytest.importorskip("timm")
    model = create_model("timm:vit_base_patch16_224", image_size=32, depth=3, embed_dim=48, num_heads=2).to(device)
    images = (torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1).to(device)
    inputs, pictures, _ = feature_pictures(model, images, [0], [10, 50], [2])
    assert list(inputs) == [0] and sorted(pictures) == [(0, 2)]
    torch.testing.assert_close(inputs[0], ((images + 1) / 2).cpu())
