"""DifFeed's feedback path, observed on the U-Net: where the mapped decoder feature lands in the second pass,
and what multi-scale feedback adds after bilinear resizing, against independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from difrep.features.noise import per_image_noise
from difrep.heads import DifFeed

T = 150
INDICES = [3, 11]  # data-set indices of the two images: they fix the per-image noise in eval mode


@pytest.fixture()
def frozen(unet, device):
    """The small random-weight U-Net on the test's device, frozen as for DifFeed; restored afterwards."""
    flags = [p.requires_grad for p in unet.parameters()]
    unet.to(device).requires_grad_(False)
    yield unet
    for p, flag in zip(unet.parameters(), flags):
        p.requires_grad_(flag)
    unet.to("cpu")


def _tol(device):
    # cuDNN may use TF32 for convolutions: the independent computation then agrees less tightly
    return dict(rtol=1e-4, atol=1e-4) if device.type == "cpu" else dict(rtol=2e-3, atol=2e-3)


def _images(device):
    gen = torch.Generator().manual_seed(5)
    return (torch.rand(len(INDICES), 3, 32, 32, generator=gen) * 2 - 1).to(device)


def _x_t(model, images):
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with DifFeed's evaluation noise (seed 0, per image index)."""
    noise = per_image_noise(images.shape[1:], INDICES, seed=0)[:, 0].to(images)
    abar = model.diffusion.alphas_cumprod[T].item()
    return abar**0.5 * images + (1 - abar) ** 0.5 * noise


def _randomize_feedback_layer(layer, gen):
    """Random conv weights and non-trivial BatchNorm statistics, so the whole conv -> BN -> ReLU is exercised."""
    conv, bn = layer[0], layer[1]
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / conv.weight[0].numel() ** 0.5)
        c = bn.num_features
        bn.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
        bn.running_var.copy_(0.5 + torch.rand(c, generator=gen))
        bn.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen))
        bn.bias.copy_(0.1 * torch.randn(c, generator=gen))


def _mapped(layer, feature):
    """conv 1x1 (no bias) -> BatchNorm (eval statistics) -> ReLU, written with the functional ops."""
    conv, bn = layer[0], layer[1]
    h = F.conv2d(feature, conv.weight)
    h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
    return F.relu(h)


def _record_blocks(model, infos):
    """Forward hooks on the given blocks' modules: every call's output, and the input of each call."""
    outputs = {i.index: [] for i in infos}
    inputs = {i.index: [] for i in infos}
    hooks = []
    for info in infos:
        module = model.get_submodule(info.module)
        hooks.append(module.register_forward_hook(
            lambda _m, args, out, b=info.index: outputs[b].append(out.detach().clone())))
        hooks.append(module.register_forward_pre_hook(
            lambda _m, args, b=info.index: inputs[b].append(args[0].detach().clone())))
    return outputs, inputs, hooks


@pytest.mark.parametrize("source", [12, 15, 18])
def test_feedback_from_decoder_block_b_reaches_encoder_block_mirror_b(frozen, device, source):
    """Bottleneck pairs of the 9-encoder-block U-Net: (12, 8), (15, 5), (18, 2). Only the layer fed by
    decoder block ``source`` is non-zero. In the second pass, encoder blocks before its mirror compute
    exactly what the plain pass computes, and the mirror's output is the plain one plus
    conv -> BN -> ReLU of the first-pass feature of ``source``."""
    model = frozen
    n = model.num_encoder_blocks
    target = 2 * n + 2 - source  # SPEC.md: decoder block b mirrors encoder block 2N + 2 - b
    assert model.mirror_block(source) == target
    torch.manual_seed(0)
    difeed = DifFeed(model, 5, t=T, feature_block=14, dim=32, depth=1, num_heads=4).to(device).eval()
    assert (source, target) in difeed.pairs
    gen = torch.Generator().manual_seed(source)
    for key, layer in difeed.feedback.items():
        if key == f"{source}_{target}":
            _randomize_feedback_layer(layer, gen)
        else:
            torch.nn.init.zeros_(layer[0].weight)
    difeed.to(device)

    images = _images(device)
    x_t = _x_t(model, images)
    info = {i.index: i for i in model.feature_info}
    encoder = [i for i in model.feature_info if i.stage == "encoder"]
    with torch.no_grad():
        plain = model.forward_intermediates(x_t, T, indices=[i.index for i in encoder] + [source, 14])
        outputs, inputs, hooks = _record_blocks(model, [*encoder, info[n + 1], info[14]])
        try:
            logits = difeed(images, indices=INDICES)
        finally:
            for h in hooks:
                h.remove()

    tol = _tol(device)
    # both passes ran every encoder block; the second call of each is the second pass
    assert all(len(outputs[i.index]) == 2 for i in encoder)
    second = {b: calls[-1] for b, calls in outputs.items()}
    for b in range(1, target + 1):
        torch.testing.assert_close(second[b], plain[b], **tol, msg=f"encoder block {b} must not change")
    # what leaves block `target` in the second pass is what the next block receives
    leaving = inputs[target + 1][-1] if target < n else inputs[n + 1][-1]
    expected_addition = _mapped(difeed.feedback[f"{source}_{target}"], plain[source])
    assert expected_addition.abs().max() > 0.1, "the feedback must be non-zero for this test to mean anything"
    torch.testing.assert_close(leaving - plain[target], expected_addition, **tol)
    for b in range(target + 1, n + 1):
        assert (second[b] - plain[b]).abs().max() > 1e-3 * plain[b].abs().max(), f"block {b} is downstream"

    # the logits are the head on the second pass's feature, and they differ from no feedback at all
    torch.testing.assert_close(logits, difeed.head(second[14]), **tol)
    with torch.no_grad():
        no_feedback = difeed.head(plain[14])
    assert (logits - no_feedback).abs().max() > 1e-3


def test_multi_scale_feedback_is_resized_bilinearly_and_summed(frozen, device, monkeypatch):
    """multi-scale: decoder blocks 11-15 all feed encoder block mirror(14) = 6 (16x16); blocks 11 and 12
    are 8x8 and must be resized. The addition DifFeed passes to the U-Net must equal the sum, computed
    here independently, of conv -> BN -> ReLU of each first-pass feature, bilinearly resized."""
    model = frozen
    torch.manual_seed(0)
    difeed = DifFeed(model, 5, t=T, feature_block=14, strategy="multi-scale", dim=32, depth=1, num_heads=4)
    target = model.mirror_block(14)
    assert target == 6
    info = {i.index: i for i in model.feature_info}
    sources = [b for b, _ in difeed.pairs]
    assert sources == [11, 12, 13, 14, 15] and {e for _, e in difeed.pairs} == {target}
    size = info[target].resolution
    resized = [b for b in sources if info[b].resolution != size]
    assert resized == [11, 12] and all(info[b].resolution == 8 for b in resized) and size == 16
    gen = torch.Generator().manual_seed(1)
    for layer in difeed.feedback.values():
        _randomize_feedback_layer(layer, gen)
    difeed.to(device).eval()

    calls = []
    original = model.forward_intermediates

    def recording(*args, **kwargs):
        calls.append(kwargs.get("feedback"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward_intermediates", recording)
    images = _images(device)
    with torch.no_grad():
        logits = difeed(images, indices=INDICES)
    monkeypatch.undo()

    x_t = _x_t(model, images)
    with torch.no_grad():
        first = model.forward_intermediates(x_t, T, indices=sources)
        expected = torch.zeros_like(model.forward_intermediates(x_t, T, indices=[target])[target])
        nearest = torch.zeros_like(expected)
        for b in sources:
            f = _mapped(difeed.feedback[f"{b}_{target}"], first[b])
            if f.shape[-1] != size:
                nearest += F.interpolate(f, size=(size, size), mode="nearest")
                f = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)
            else:
                nearest += f
            expected += f
        second = model.forward_intermediates(x_t, T, indices=[14], feedback={target: expected})[14]
    assert (expected - nearest).abs().max() > 1e-2, "bilinear and nearest resizing must differ on this data"

    tol = _tol(device)
    passed = [c for c in calls if c]
    assert len(passed) == 1, "one second pass, with feedback"
    assert set(passed[0]) == {target}
    torch.testing.assert_close(passed[0][target], expected, **tol)
    torch.testing.assert_close(logits, difeed.head(second), **tol)
