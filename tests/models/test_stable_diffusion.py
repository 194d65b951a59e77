"""Stable Diffusion: latents, the null and the learnable text context, the block names, heads trained on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backbone_factories import save_sd_folder
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

from difrep import FeatureExtractor, create_model
from difrep.errors import UserError
from difrep.evaluation.linear import sgd_linear_probe
from difrep.heads import AttentionHead, DifFormer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    save_sd_folder(root)
    return root


@pytest.fixture()
def sd(folder):
    return create_model(f"sd:{folder}")


def test_numbering_mirrors_adm_25_blocks_middle_13(sd):
    assert sd.num_blocks == 25 and sd.num_encoder_blocks + 1 == 13 and sd.feature_info[12].stage == "middle"
    assert sd.image_size == 32 and sd.input_shape == (4, 16, 16), "a 2-level VAE: 32 pixels -> 16 latents"


def test_latents_are_the_scaled_posterior_mode(sd, folder):
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
    torch.testing.assert_close(sd.encode(images), expected, rtol=0, atol=0)


def test_the_null_text_context_is_the_empty_prompts_embedding(sd, folder):
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text = CLIPTextModel.from_pretrained(folder / "text_encoder")
    ids = tok([""], padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert ids[0, 0] == 52 and (ids[0, 1:] == 53).all()
    with torch.no_grad():
        torch.testing.assert_close(sd.text_embedding, text(ids).last_hidden_state, rtol=0, atol=0)
    assert "text_embedding" not in dict(sd.named_parameters()), "null text is a fixed buffer"


def test_traversal_reproduces_the_unets_forward_with_the_null_context(sd):
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([7, 650])
    with torch.no_grad():
        out, _ = sd.forward_intermediates(x, t, indices=[], intermediates_only=False)
        expected = sd.unet(x, t, encoder_hidden_states=sd.text_embedding.expand(2, -1, -1)).sample
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_block_names_match_difts_up_ft_index_and_the_papers_numbers(sd):
    seen = {}
    for i, block in enumerate(sd.unet.up_blocks):
        block.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, out))
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([261])
    with torch.no_grad():
        sd.unet(x, t, encoder_hidden_states=sd.text_embedding)
        feats = sd.forward_intermediates(x, t, [f"dift:{i}" for i in range(4)] + ["paper:15", "paper:18"])
    for i in range(4):
        torch.testing.assert_close(feats[sd.block_aliases[f"dift:{i}"]], seen[i], rtol=0, atol=0)
    assert sd.validate_blocks(["dift:0", "dift:1", "dift:3", "paper:15", "paper:18"]) == [16, 19, 25, 13, 16]
    with pytest.raises(UserError, match="known names: dift:0"):
        sd.validate_blocks(["dift:9"])


def test_learnable_text_gets_gradients_while_the_unet_stays_frozen(folder):
    sd = create_model(f"sd:{folder}", learnable_text=True)
    sd.freeze()
    assert [n for n, p in sd.named_parameters() if p.requires_grad] == ["text_embedding"]
    extractor = FeatureExtractor(sd, [100], [16], requires_grad=True)
    feats = extractor(torch.rand(2, 3, 32, 32) * 2 - 1, indices=[0, 1])
    feats[(100, 16)].pow(2).mean().backward()
    assert sd.text_embedding.grad is not None and sd.text_embedding.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in sd.named_parameters() if n != "text_embedding")


def _labelled_images(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    images = torch.rand(n, 3, 32, 32, generator=gen) * 0.6 - 0.3
    images[:, labels % 3] = 0  # each class darkens a different channel pattern
    images += (labels.float() / 3 - 0.5)[:, None, None, None]
    return images.clamp(-1, 1), labels


@pytest.mark.parametrize("head_name", ["attention", "difformer", "linear"])
def test_heads_learn_on_sd_features(sd, head_name):
    images, labels = _labelled_images()
    blocks = [16, 19] if head_name == "difformer" else [16]
    feats = FeatureExtractor(sd, [100], blocks, pool=None if head_name != "linear" else 2)(images, list(range(40)))
    if head_name == "linear":
        flat = feats[(100, 16)].flatten(1)
        result = sgd_linear_probe(flat, labels, flat, labels, 4, epochs=30, lr=0.1, batch_size=8)
        assert result.top1 > 50, "4 brightness classes: the probe must beat chance (25%) on its training set"
        return
    torch.manual_seed(0)
    if head_name == "attention":
        c, s = sd.block_info(16).num_chs, sd.block_info(16).resolution
        head = AttentionHead(c, s, 4, dim=32, depth=1, num_heads=2)
        inputs = feats[(100, 16)]
    else:
        shapes = {b: (sd.block_info(b).num_chs, sd.block_info(b).resolution) for b in blocks}
        head = DifFormer(shapes, [100], 4, dim=32, depth=1, num_heads=2)
        inputs = feats
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(head(inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, f"{head_name}: the loss must fall ({losses[0]:.2f} -> {losses[-1]:.2f})"
