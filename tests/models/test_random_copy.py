"""random_copy: every backbone family's random-init control has the trained model's blocks, new weights and the
trained input pipeline (VAE latents, SD's null text)."""

from __future__ import annotations

import pytest
import torch

from difrep import create_model


def _families(backbone_folders):
    return {
        "adm": lambda: create_model("adm", image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                                    attention_resolutions="8", num_head_channels=16),
        "timm": lambda: create_model("timm:resnet18", image_size=32),
        "diffusers": lambda: create_model(f"diffusers:{backbone_folders / 'ddpm'}"),
        "sd": lambda: create_model(f"sd:{backbone_folders / 'sd'}"),
        "dit": lambda: create_model(f"diffusers:{backbone_folders / 'dit'}", class_label=2),
    }


@pytest.mark.parametrize("family", ["adm", "timm", "diffusers", "sd", "dit"])
def test_a_random_copy_has_the_blocks_new_weights_and_the_same_inputs(backbone_folders, family):
    torch.manual_seed(0)
    trained = _families(backbone_folders)[family]()
    torch.manual_seed(1)
    copy = trained.random_copy()
    assert type(copy) is type(trained) and copy.feature_info == trained.feature_info
    assert copy.describe() == trained.describe()
    own, new = trained.state_dict(), copy.state_dict()
    drawn = [k for k in own if own[k].ndim >= 2 and own[k].dtype.is_floating_point and own[k].any()
             and not k.startswith(("vae.", "text_embedding")) and not k.endswith("pos_embed.pos_embed")]
    changed = [k for k in drawn if not torch.equal(own[k], new[k])]  # every randomly drawn weight, not the VAE's
    assert drawn and changed == drawn, sorted(set(drawn) - set(changed))[:5]
    images = torch.rand(2, 3, trained.image_size, trained.image_size) * 2 - 1
    torch.testing.assert_close(copy.encode(images), trained.encode(images), msg="the input pipeline is kept")
    if family == "dit":
        assert copy.class_label == 2
    x = trained.encode(images)
    b = trained.feature_info[-1].index
    with torch.no_grad():
        a, c = trained.forward_intermediates(x, 100, [b])[b], copy.forward_intermediates(x, 100, [b])[b]
    assert a.shape == c.shape and not torch.allclose(a, c)
