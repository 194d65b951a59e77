"""Heads: the paper's parameter counts, shapes, attention arithmetic, and DifFeed's two passes."""

from __future__ import annotations

import math

import pytest
import torch

from difrep import FeatureExtractor, create_model
from difrep.heads import AttentionHead, CNNHead, DifFeed, DifFormer, LinearHead, MLPHead, feedback_pairs
from difrep.heads.attention import TransformerLayer


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def adm256():
    with torch.device("meta"):
        return create_model("adm-256-uncond")


@pytest.mark.parametrize("depth, millions", [(1, 15.2), (2, 27.8), (4, 53.0)])
def test_attention_head_parameter_counts(depth, millions):
    """Table 2: the Attention head on b=24 (1024 channels, 16x16) with 1000 classes."""
    with torch.device("meta"):
        head = AttentionHead(1024, 16, 1000, depth=depth)
    assert round(_count(head) / 1e6, 1) == millions


def test_difformer_and_difeed_system_sizes(adm256):
    """Table 8: DifFormer 585M and DifFeed 583M, U-Net included."""
    info = {i.index: i for i in adm256.feature_info}
    with torch.device("meta"):
        difformer = DifFormer({b: (info[b].num_chs, info[b].resolution) for b in (19, 24, 30)}, [90, 150, 300], 1000)
        difeed = DifFeed(adm256, 1000)
    assert round((_count(adm256) + _count(difformer)) / 1e6) == 585
    assert round(_count(difeed) / 1e6) == 583


@pytest.mark.parametrize("strategy, millions", [("bottleneck", 2.8), ("all", 7.6), ("windowed", 5.2), ("multi-scale", 5.2)])
def test_feedback_parameter_counts(adm256, strategy, millions):
    """Table 4's counts are those of the 1x1 convs; BatchNorm adds 2 parameters per target channel."""
    with torch.device("meta"):
        difeed = DifFeed(adm256, 1000, strategy=strategy)
    convs = sum(layer[0].weight.numel() for layer in difeed.feedback.values())
    assert round(convs / 1e6, 1) == millions
    bn = sum(layer[1].weight.numel() * 2 for layer in difeed.feedback.values())
    assert _count(difeed.feedback) == convs + bn


def test_feedback_pairs_follow_the_paper(adm256):
    assert feedback_pairs(adm256, "bottleneck", 24) == [(21, 17), (24, 14), (27, 11), (30, 8), (33, 5), (36, 2)]
    assert feedback_pairs(adm256, "windowed", 24) == [(b, 38 - b) for b in range(20, 25)]
    assert feedback_pairs(adm256, "multi-scale", 24) == [(b, 14) for b in range(20, 25)]
    assert feedback_pairs(adm256, "all", 24) == [(b, 38 - b) for b in range(20, 38)]
    with pytest.raises(ValueError, match="strategy='every'"):
        feedback_pairs(adm256, "every", 24)


def test_transformer_block_attention_is_softmax_qk_v():
    torch.manual_seed(0)
    block = TransformerLayer(16, num_heads=4).eval()
    x = torch.randn(2, 5, 16)
    h = block.norm1(x)
    q, k, v = block.qkv(h).chunk(3, dim=-1)
    heads = []
    for i in range(4):
        sl = slice(4 * i, 4 * i + 4)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(weights @ v[..., sl])
    y = x + block.proj(torch.cat(heads, dim=-1))
    expected = y + block.mlp(block.norm2(y))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_simple_heads_shapes_and_sizes():
    f = torch.randn(3, 64, 8, 8)
    assert LinearHead(64, 10, pool=2)(f).shape == (3, 10)
    assert _count(LinearHead(64, 10, pool=2)) == 64 * 4 * 10 + 10
    mlp = MLPHead(64, 10, hidden=[32, 16], pool=1)
    assert mlp(f).shape == (3, 10) and _count(mlp) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    cnn = CNNHead(64, 10, conv_channels=[32, 16])
    assert cnn(f).shape == (3, 10)
    assert _count(cnn) == 64 * 32 * 9 + 2 * 32 + 32 * 16 * 9 + 2 * 16 + 16 * 10 + 10
    with pytest.raises(ValueError, match="two convolutions"):
        CNNHead(64, 10, conv_channels=[32])


def test_tokenizer_pools_to_at_most_16_and_layernorm_covers_c_s_s():
    head = AttentionHead(8, 32, 5, dim=16, depth=1, num_heads=2)
    assert head.tokenizer.size == 16
    assert head.tokenizer.norm.weight.shape == (8, 16, 16)
    assert head(torch.randn(2, 8, 32, 32)).shape == (2, 5)
    bn = AttentionHead(8, 4, 5, dim=16, depth=1, num_heads=2, norm="batchnorm")
    assert bn.tokenizer.size == 4 and isinstance(bn.tokenizer.norm, torch.nn.BatchNorm2d)


def test_difformer_uses_every_t_and_b(unet):
    info = {i.index: i for i in unet.feature_info}
    blocks, steps = [8, 10, 14], [50, 200]
    head = DifFormer({b: (info[b].num_chs, info[b].resolution) for b in blocks}, steps, 7, dim=32, depth=1, num_heads=4)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = FeatureExtractor(unet, steps, blocks)(x, indices=[0, 1])
    out = head(feats)
    assert out.shape == (2, 7)
    changed = dict(feats)
    changed[(200, 8)] = changed[(200, 8)] + torch.randn_like(changed[(200, 8)])  # a shift alone is normalised away
    assert not torch.allclose(head(changed), out), "every (t, b) must reach the output"
    with pytest.raises(KeyError, match=r"needs features \[\(50, 8\)"):
        head({k: v for k, v in feats.items() if k != (50, 8)})


@pytest.fixture()
def difeed(unet):
    for p in unet.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    model = DifFeed(unet, 5, t=150, feature_block=14, dim=32, depth=1, num_heads=4)
    yield model
    for p in unet.parameters():
        p.requires_grad_(True)


def test_difeed_without_feedback_is_the_attention_head_on_plain_features(unet, difeed):
    difeed.eval()
    for layer in difeed.feedback.values():
        torch.nn.init.zeros_(layer[0].weight)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    plain = FeatureExtractor(unet, [150], [14])(x, indices=[4, 5, 6])[(150, 14)]
    with torch.no_grad():
        torch.testing.assert_close(difeed(x, indices=[4, 5, 6]), difeed.head(plain), rtol=1e-5, atol=1e-5)


def test_difeed_trains_feedback_and_head_only_and_stops_early(unet, difeed):
    assert difeed.pairs == [(12, 8), (15, 5), (18, 2)]  # 9 encoder blocks: b feeds 20 - b
    runs: dict[int, int] = {}
    hooks = [unet.get_submodule(i.module).register_forward_hook(
        lambda *_a, b=i.index: runs.__setitem__(b, runs.get(b, 0) + 1)) for i in unet.feature_info]
    try:
        difeed.train()
        difeed(torch.rand(2, 3, 32, 32) * 2 - 1).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    assert runs == {**{b: 2 for b in range(1, 15)}, **{b: 1 for b in range(15, 19)}}, \
        "first pass to block 18 (deepest source), second pass to block 14 (the feature)"
    assert all(p.grad is None for p in unet.parameters()), "the frozen U-Net keeps no gradient"
    assert all(p.grad is not None for p in difeed.feedback.parameters())
    assert all(p.grad is not None for p in difeed.head.parameters())


def test_difeed_training_noise_is_fresh_by_default_and_per_image_when_fixed(unet):
    unet.requires_grad_(False)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    for noise, same in (("fresh", False), ("fixed", True)):
        torch.manual_seed(0)
        head = DifFeed(unet, 5, t=150, feature_block=14, dim=32, depth=1, num_heads=4, train_noise=noise).train()
        with torch.no_grad():
            a, b = head(x, indices=[1, 2, 3]), head(x, indices=[1, 2, 3])
        assert torch.equal(a, b) is same, noise
    with pytest.raises(ValueError, match="train_noise='sometimes'"):
        DifFeed(unet, 5, feature_block=14, train_noise="sometimes")
    unet.requires_grad_(True)


def test_difeed_with_a_precomputed_first_pass_gives_the_same_logits(unet, difeed):
    difeed.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        first = difeed.first_pass(difeed.noisy(x, [7, 8]))
        torch.testing.assert_close(difeed(x, [7, 8], first=first), difeed(x, [7, 8]))


def test_linear_head_is_one_linear_map_of_the_2x2_pooled_map_and_takes_cached_features():
    """The GD probe by hand: the mean of each quadrant, flattened channel-major, times W plus b. A cache
    stores exactly that flattened vector, so both inputs must give the same logits."""
    torch.manual_seed(0)
    head = LinearHead(3, 5, pool=2)
    f = torch.randn(2, 3, 8, 8)
    quadrants = f.reshape(2, 3, 2, 4, 2, 4).mean(dim=(3, 5))  # [N, C, 2, 2]
    expected = quadrants.flatten(1) @ head.fc.weight.T + head.fc.bias
    torch.testing.assert_close(head(f), expected)
    torch.testing.assert_close(head(quadrants.flatten(1)), expected)
