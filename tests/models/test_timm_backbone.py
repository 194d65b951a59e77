"""timm backbones: the paper's numbering, features equal to timm's own, local weights in timm/torchvision/MAE layouts."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from difrep import FeatureExtractor, create_model
from difrep.errors import UserError
from difrep.models import CheckpointError

TINY_VIT = dict(image_size=32, depth=3, embed_dim=48, num_heads=2)


def test_resnet50_blocks_are_layer1_to_layer4():
    model = create_model("timm:resnet50")
    rows = [(b.index, b.module, b.num_chs, b.resolution) for b in model.feature_info]
    assert rows == [(1, "net.layer1", 256, 56), (2, "net.layer2", 512, 28), (3, "net.layer3", 1024, 14),
                    (4, "net.layer4", 2048, 7)], "SPEC: b = 1..4 are layer1..layer4 at 56/28/14/7 for a 224 input"
    assert not model.takes_timestep and model.diffusion is None
    with pytest.raises(UserError, match=r"valid blocks are 1\.\.4"):
        model.validate_blocks([5])


@pytest.mark.parametrize("name, options, blocks, timm_indices", [
    ("resnet50", {"image_size": 64}, [4, 1, 3], [4, 1, 3]),
    ("vit_base_patch16_224", TINY_VIT, [3, 1], [2, 0]),
])
def test_features_equal_timms_own_forward_intermediates(name, options, blocks, timm_indices, device):
    model = create_model(f"timm:{name}", **options).to(device)
    size = model.image_size
    x = torch.randn(2, 3, size, size, device=device)
    with torch.no_grad():
        ours = model.forward_intermediates(x, 123, blocks, stop_early=True)
        theirs = model.net.forward_intermediates(x, indices=sorted(timm_indices), intermediates_only=True)
    assert list(ours) == blocks
    by_index = dict(zip(sorted(timm_indices), theirs))
    for b, i in zip(blocks, timm_indices):
        torch.testing.assert_close(ours[b], by_index[i], rtol=0, atol=0)
    if "vit" in name:
        assert ours[3].shape == (2, 48, 2, 2), "ViT features are the patch tokens as an NCHW grid"


def test_stop_early_runs_no_stage_after_the_deepest_block():
    model = create_model("timm:resnet50", image_size=32)
    called = []
    for name in ("layer1", "layer2", "layer3", "layer4", "fc"):
        getattr(model.net, name).register_forward_hook(lambda *a, n=name: called.append(n))
    model.forward_intermediates(torch.randn(1, 3, 32, 32), None, [2], stop_early=True)
    assert called == ["layer1", "layer2"]


def test_torchvision_layout_weights_give_torchvisions_features(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet50().eval()
    for m in reference.modules():  # non-trivial batch-norm statistics, so that a wrong mapping shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet50_torchvision.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = create_model("timm:resnet50", checkpoint=path, image_size=64, mean=(0, 0, 0), std=(1, 1, 1))
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    x = model.encode(images)
    torch.testing.assert_close(x, (images + 1) / 2, msg="mean 0 / std 1: SimCLR's unnormalised [0, 1] input")
    with torch.no_grad():
        h = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = reference.layer2(reference.layer1(h))
        ours = model.forward_intermediates(x, None, [2], stop_early=True)[2]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_mae_checkpoint_loads_skips_the_decoder_and_changes_the_features(tmp_path):
    model = create_model("timm:vit_base_patch16_224", **TINY_VIT)
    torch.manual_seed(2)
    trained = timm.create_model("vit_base_patch16_224", img_size=32, depth=3, embed_dim=48, num_heads=2)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("head.")}
    state |= {"mask_token": torch.zeros(1, 1, 48), "decoder_embed.weight": torch.zeros(16, 48)}
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": state, "epoch": 799}, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.forward_intermediates(x, None, [3])[3]
        with pytest.warns(UserWarning, match="skipped .*decoder_embed.weight"):
            loaded = create_model("timm:vit_base_patch16_224", checkpoint=path, **TINY_VIT)
        after = loaded.forward_intermediates(x, None, [3])[3]
        expected = trained.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
    assert not torch.allclose(before, after), "the weights must change the features"
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_base_patch16_224", img_size=32, depth=1, embed_dim=48,
                                 num_heads=2).state_dict(), path)
    with pytest.raises(CheckpointError, match="vit.pth lacks .* tensor"):
        create_model("timm:resnet50", checkpoint=path)
    with pytest.raises(UserError, match="timm has no model 'resnet5000'"):
        create_model("timm:resnet5000")


def test_extractor_runs_a_t_free_backbone_once_and_keys_every_t():
    model = create_model("timm:resnet50", image_size=32)
    calls = []
    model.net.layer1.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    extractor = FeatureExtractor(model, [0, 90, 300], [2, 4], pool=1, chunk_size=64)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    feats = extractor(images)  # no indices needed: there is no noise
    assert calls == [3], "one pass over the 3 images, not one per t"
    torch.testing.assert_close(feats[(90, 4)], feats[(300, 4)], rtol=0, atol=0)
    with torch.no_grad():
        direct = model.forward_intermediates(model.encode(images), None, [4])[4].mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(feats[(0, 4)], direct, rtol=1e-5, atol=1e-6)
