"""DiT from diffusers: blocks equal diffusers' own forward, the null class by default, early exit, folders."""

from __future__ import annotations

import json

import pytest
import torch
from backbone_factories import save_dit_pipeline, tiny_dit
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

from difrep import create_model
from difrep.errors import UserError
from difrep.heads import DifFeed
from difrep.models.dit import DiT, random_dit

DEPTH = 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    save_dit_pipeline(root, depth=DEPTH)
    return root


@pytest.fixture()
def model(folder):
    return create_model(f"diffusers:{folder}")


def _reference(folder, device):
    """diffusers' own model from the same folder, untouched by difrep."""
    return DiTTransformer2DModel.from_pretrained(str(folder / "transformer")).eval().to(device)


def _with_hooks(ref):
    seen = {}
    ref.pos_embed.register_forward_hook(lambda m, i, o: seen.__setitem__(0, o))
    for b, block in enumerate(ref.transformer_blocks, start=1):
        block.register_forward_hook(lambda m, i, o, b=b: seen.__setitem__(b, o))
    ref.proj_out_2.register_forward_hook(lambda m, i, o: seen.__setitem__(DEPTH + 1, o))
    return seen


def test_the_block_table_numbers_embed_blocks_and_final(model):
    info = model.feature_info
    assert [i.index for i in info] == list(range(DEPTH + 2)) and model.first_block == 0
    assert [i.stage for i in info] == ["embed"] + ["transformer"] * DEPTH + ["final"]
    assert info[2].module == "transformer.transformer_blocks.1", "block b is transformer_blocks[b-1]"
    assert {i.num_chs for i in info[:-1]} == {16} and info[-1].num_chs == 2 * 2 * 8, "p^2 x (eps + sigma)"
    assert {(i.reduction, i.resolution) for i in info} == {(4, 4)}, "patch 2 on latents 2x smaller than images"
    assert model.validate_blocks(["embed", "final", 2]) == [0, DEPTH + 1, 2]
    with pytest.raises(UserError, match=r"valid blocks are 0..4 \(embed 0, transformer 1..3, final 4\)"):
        model.validate_blocks([5])


def test_every_block_equals_diffusers_own_forward_with_the_null_class(folder, model, device):
    model, ref = model.to(device), _reference(folder, device)
    seen = _with_hooks(ref)
    latents = torch.randn(2, 4, 8, 8, device=device)
    t = torch.tensor([20, 700], device=device)
    with torch.no_grad():
        expected = ref(latents, t, class_labels=torch.full((2,), 10, device=device)).sample
        out, feats = model.forward_intermediates(latents, t, intermediates_only=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert list(feats) == list(range(DEPTH + 2))
    for b, tokens in seen.items():
        torch.testing.assert_close(feats[b].flatten(2).transpose(1, 2), tokens, rtol=0, atol=1e-5, msg=f"block {b}")


def test_token_row_times_width_plus_column_sits_at_row_column(model):
    """Without the position embedding, block 0 is the patch convolution's own [N, D, H/p, W/p] output."""
    pos_embed = model.transformer.pos_embed
    pos_embed.pos_embed.zero_()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_intermediates(x, 5, ["embed"])[0], pos_embed.proj(x))


def test_a_fixed_class_label_equals_diffusers_forward_with_that_label(folder, device):
    model = create_model(f"diffusers:{folder}", class_label=3).to(device)
    ref = _reference(folder, device)
    x, t = torch.randn(2, 4, 8, 8, device=device), torch.tensor([100, 100], device=device)
    with torch.no_grad():
        expected = ref(x, t, class_labels=torch.tensor([3, 3], device=device)).sample
        null = ref(x, t, class_labels=torch.tensor([10, 10], device=device)).sample
        torch.testing.assert_close(model(x, t), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(expected, null), "the label must matter for the test to mean anything"
    with pytest.raises(UserError, match=r"class_label=10: this DiT has classes 0..9 \(leave class_label unset"):
        create_model(f"diffusers:{folder}", class_label=10)


def test_learnable_class_starts_at_the_null_row_and_trains(folder, model):
    learn = create_model(f"diffusers:{folder}", learnable_class=True)
    vectors = learn.trainable_with_head()
    assert len(vectors) == DEPTH, "a random DiT's blocks hold different tables: a vector each"
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([50, 400])
    with torch.no_grad():
        torch.testing.assert_close(learn(x, t), model(x, t), rtol=0, atol=0)
    learn.freeze()
    assert [p for p in learn.parameters() if p.requires_grad] == vectors
    learn.forward_intermediates(x, t, [2], stop_early=True)[2].square().mean().backward()
    assert vectors[0].grad.abs().sum() > 0 and vectors[1].grad.abs().sum() > 0
    assert vectors[2].grad is None, "block 3 did not run"
    assert model.trainable_with_head() == []


def test_blocks_with_equal_label_tables_share_one_learnable_vector(folder):
    dit = tiny_dit(in_channels=3, depth=DEPTH)
    table = dit.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight
    for block in dit.transformer_blocks[1:]:
        block.norm1.emb.class_embedder.embedding_table.weight.data.copy_(table)
    model = DiT(dit, create_model(f"diffusers:{folder}").diffusion, vae=None, learnable_class=True, image_size=None)
    assert len(model.trainable_with_head()) == 1, "converted checkpoints copy DiT's one table into every block"


def test_early_exit_at_block_k_runs_k_blocks(model):
    calls = []
    for b, block in enumerate(model.transformer.transformer_blocks, start=1):
        block.register_forward_hook(lambda m, i, o, b=b: calls.append(b))
    model.transformer.proj_out_2.register_forward_hook(lambda m, i, o: calls.append("final"))
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        model.forward_intermediates(x, 10, [2], stop_early=True)
        assert calls == [1, 2]
        calls.clear()
        model.forward_intermediates(x, 10, ["embed"], stop_early=True)
        assert calls == []
        model.forward_intermediates(x, 10, [1])
        assert calls == [1, 2, 3, "final"], "without stop_early the whole model runs"


def test_timesteps_are_batched_in_one_pass(model):
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 250, 999])
    with torch.no_grad():
        batched = model.forward_intermediates(x, t, [1, 3])
        for i in range(3):
            alone = model.forward_intermediates(x[i:i + 1], int(t[i]), [1, 3])
            for b in (1, 3):
                torch.testing.assert_close(batched[b][i:i + 1], alone[b], rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="out of range|timestep"):
        model.forward_intermediates(x, 1000, [1])


def test_a_pipeline_folder_loads_with_its_vae_and_scheduler(folder, model):
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DiTPipeline"
    assert isinstance(model, DiT) and model.image_size == 16 and model.input_shape == (4, 8, 8)
    scheduler = DDIMScheduler.from_pretrained(str(folder / "scheduler"))
    torch.testing.assert_close(model.diffusion.betas.float(), scheduler.betas.float())
    vae = AutoencoderKL.from_pretrained(str(folder / "vae")).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
    torch.testing.assert_close(model.encode(images), expected)
    assert model.describe()["class_label"] == 10 and model.describe()["type"] == "DiT"


def test_a_latent_dit_without_its_vae_is_refused_and_a_pixel_dit_needs_none(folder, tmp_path):
    with pytest.raises(UserError, match=r"a DiT on 4-channel latents but no vae/ is beside it: pass the pipeline"):
        tiny_dit().save_pretrained(tmp_path / "alone")
        create_model(f"diffusers:{tmp_path / 'alone'}")
    tiny_dit(in_channels=1, sample_size=8).save_pretrained(tmp_path / "grey")
    DDIMScheduler().save_pretrained(tmp_path / "scheduler")
    grey = create_model(f"diffusers:{tmp_path / 'grey'}")
    assert grey.image_size == 8 and grey.feature_info[1].reduction == 2
    images = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(grey.encode(images), images.mean(1, keepdim=True))
    with pytest.raises(UserError, match="takes the option.s. image_size, class_label, learnable_class, not learnable_text"):
        create_model(f"diffusers:{folder}", learnable_text=True)


def test_pruning_keeps_the_blocks_up_to_the_deepest(model):
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        full = model.forward_intermediates(x, 30, [2])[2]
        assert model.prune_intermediate_layers([1, 2]) == 2
        torch.testing.assert_close(model.forward_intermediates(x, 30, [2])[2], full, rtol=0, atol=0)
    assert len(model.transformer.transformer_blocks) == 2 and model.transformer.proj_out_2 is None
    with pytest.raises(UserError, match="pruned after block 2"):
        model.validate_blocks(["final"])


def test_difeed_is_refused_saying_why(model):
    with pytest.raises(UserError, match="DifFeed feeds .* decoder features back into its encoder.*DiT has no decoder"):
        DifFeed(model, 10, t=10, feature_block=2)
    with pytest.raises(UserError, match="no encoder-decoder skips"):
        model.forward_intermediates(torch.randn(1, 4, 8, 8), 10, [2], feedback={1: torch.zeros(1)})


@pytest.mark.parametrize("size, millions", [("S", 33), ("B", 130), ("L", 458), ("XL", 675)])
def test_dits_sizes_have_the_papers_parameter_counts(size, millions):
    """DiT's Table 4 (patch 2). diffusers keeps a copy of the timestep and label embedders in every block, where
    DiT has one: the paper's count is diffusers' less the depth - 1 copies."""
    with torch.device("meta"):
        dit = random_dit(size)
    total = sum(p.numel() for p in dit.parameters())
    copy = sum(p.numel() for p in dit.transformer_blocks[0].norm1.emb.parameters())
    assert round((total - (len(dit.transformer_blocks) - 1) * copy) / 1e6) == millions


def test_new_dit_writes_folders_that_diffusers_folder_reads(folder, tmp_path, capsys):
    from difrep.cli.main import main

    pixels = ["new-dit", str(tmp_path / "grey"), "--size", "S", "--depth", "2", "--width", "32", "--heads", "2",
              "--sample-size", "28", "--in-channels", "1", "--classes", "10"]
    assert main(pixels) == 0
    grey = create_model(f"diffusers:{tmp_path / 'grey'}")
    assert (grey.image_size, grey.depth, grey.feature_info[1].num_chs, grey.num_classes) == (28, 2, 32, 10)
    assert grey.diffusion.betas[0].item() == pytest.approx(1e-4) and grey.diffusion.betas[-1].item() == pytest.approx(0.02)
    assert main(pixels) == 2 and "exists and is not empty" in capsys.readouterr().err
    latent = ["new-dit", str(tmp_path / "latent"), "--size", "S", "--depth", "2", "--width", "32", "--heads", "2",
              "--sample-size", "8"]
    assert main(latent) == 2 and "needs a VAE" in capsys.readouterr().err
    assert main([*latent, "--vae", str(folder)]) == 0
    control = create_model(f"diffusers:{tmp_path / 'latent'}")
    assert (tmp_path / "latent" / "model_index.json").is_file() and control.image_size == 16
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(control.encode(images), create_model(f"diffusers:{folder}").encode(images),
                               msg="the random-init control reads the trained pipeline's VAE")
