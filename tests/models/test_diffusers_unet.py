"""diffusers UNet2DModel: ADM-mirroring numbering, the model's own traversal, stop early, its schedule."""

from __future__ import annotations

import pytest
import torch
from backbone_factories import save_unet2d_folder
from diffusers import DDPMScheduler

from difrep import create_model
from difrep.errors import UserError
from difrep.heads import DifFeed


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddpm")
    save_unet2d_folder(root)
    return root


@pytest.fixture()
def model(folder):
    return create_model(f"diffusers:{folder}")


def test_an_adm_shaped_unet2d_has_37_blocks_with_the_middle_at_19(model):
    assert model.num_blocks == 37 and model.num_encoder_blocks + 1 == 19
    info = model.feature_info
    assert [i.stage for i in info].count("encoder") == 18 and info[18].module == "unet.mid_block"
    assert info[0].module == "unet.conv_in" and info[3].module == "unet.down_blocks.0.downsamplers"
    assert info[-1].resolution == 32 and info[18].resolution == 1, "5 downsamplers: 32 -> 1"
    assert model.mirror_block(24) == 14, "decoder block b reads the skip of encoder block 38 - b"


def test_every_block_through_difreps_path_reproduces_the_models_forward(model, device):
    model = model.to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    t = torch.tensor([3, 800], device=device)
    with torch.no_grad():
        out, feats = model.forward_intermediates(x, t, indices=None, intermediates_only=False)
        expected = model.unet(x, t).sample
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert list(feats) == list(range(1, 38))


def test_features_are_the_outputs_of_the_modules_each_block_names(model):
    """Hooks on the model's own forward see the same tensors as blocks 1, 6, 19, 24 and 37."""
    seen = {}
    last_module = {b: model._parts[b - 1][-1] for b in (1, 6, 19, 24, 37)}
    for b, name in last_module.items():
        target = model.get_submodule(name)
        target = target[-1] if isinstance(target, torch.nn.ModuleList) else target
        target.register_forward_hook(lambda m, i, o, b=b: seen.__setitem__(b, o[0] if isinstance(o, tuple) else o))
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    with torch.no_grad():
        model.unet(x, t)
        ours = model.forward_intermediates(x, t, list(last_module))
    for b in last_module:
        torch.testing.assert_close(ours[b], seen[b], rtol=0, atol=0, msg=f"block {b}")


def test_stop_early_calls_no_module_after_the_deepest_block(model):
    called: list[str] = []
    for name, module in model.unet.named_modules():
        if name and not list(module.children()):
            module.register_forward_hook(lambda m, i, o, n=name: called.append(n))
    model.forward_intermediates(torch.randn(1, 3, 32, 32), 10, [21], stop_early=True)
    block_of = {}
    for b, names in enumerate(model._parts, start=1):
        for name in names:
            block_of[name.removeprefix("unet.")] = b
    def block(n: str) -> int:
        hits = [b for prefix, b in block_of.items() if n == prefix or n.startswith(prefix + ".")]
        return hits[0] if hits else 0  # 0: the time embedding
    assert max(block(n) for n in called) == 21
    assert any(block(n) == 21 for n in called) and not any(n.startswith("conv_out") for n in called)


def test_the_schedule_is_the_schedulers(model, folder):
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    torch.testing.assert_close(model.diffusion.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=1e-6, atol=1e-7)
    x0, eps, t = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.tensor([10, 900])
    torch.testing.assert_close(model.diffusion.q_sample(x0, t, eps), scheduler.add_noise(x0, eps, t),
                               rtol=1e-5, atol=1e-5)


def test_pruned_model_keeps_only_what_reaches_the_block(model):
    full = sum(p.numel() for p in model.parameters())
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([50])
    with torch.no_grad():
        before = model.forward_intermediates(x, t, [22])[22]
        model.prune_intermediate_layers([22])
        after = model.forward_intermediates(x, t, [22], stop_early=True)[22]
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) < full
    with pytest.raises(UserError, match="pruned after block 22"):
        model.validate_blocks([23])


def test_difeed_feedback_reaches_the_diffusers_encoder(model):
    torch.manual_seed(0)
    head = DifFeed(model, num_classes=3, t=100, feature_block=24, strategy="windowed", dim=16, depth=1,
                   num_heads=2).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        logits = head(images, indices=[0, 1])
        for layer in head.feedback.values():
            layer[1].bias.fill_(1.0)  # a non-zero feedback after the ReLU
        changed = head(images, indices=[0, 1])
    assert logits.shape == (2, 3) and not torch.allclose(logits, changed)


def test_a_text_conditioned_folder_is_pointed_to_sd(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(UserError, match="use sd:"):
        create_model(f"diffusers:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        create_model(f"diffusers:{tmp_path / 'missing'}")


def test_a_folder_of_another_class_is_refused_naming_it_not_loaded_as_a_random_unet(tmp_path):
    from diffusers import VQModel

    VQModel(block_out_channels=(8,), norm_num_groups=4, latent_channels=2).save_pretrained(tmp_path / "vq")
    with pytest.raises(UserError, match=r"config.json describes a VQModel; diffusers:FOLDER reads "
                                        r"UNet2DModel, DiTTransformer2DModel"):
        create_model(f"diffusers:{tmp_path / 'vq'}")
    pipeline = tmp_path / "pipeline"
    VQModel(block_out_channels=(8,), norm_num_groups=4, latent_channels=2).save_pretrained(pipeline / "unet")
    DDPMScheduler().save_pretrained(pipeline / "scheduler")
    with pytest.raises(UserError, match=r"unet/config.json describes a VQModel"):
        create_model(f"diffusers:{pipeline}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"broken/config.json: not a diffusers config"):
        create_model(f"diffusers:{tmp_path / 'broken'}")
    (tmp_path / "broken" / "config.json").write_text('{"sample_size": 8}')
    with pytest.raises(UserError, match="names no _class_name"):
        create_model(f"diffusers:{tmp_path / 'broken'}")
