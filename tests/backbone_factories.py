"""Tiny random-weight diffusers U-Nets and Stable Diffusion folders, built from configs (no download)."""

from __future__ import annotations

import json

import torch


def adm_shaped_unet2d(sample_size: int = 32):
    """A UNet2DModel shaped like ADM-256: 6 levels of 2 resnets, attention at the 3 lowest resolutions."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=sample_size, block_out_channels=(16, 16, 32, 32, 48, 48), layers_per_block=2,
        down_block_types=("DownBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
        up_block_types=("AttnUpBlock2D",) * 3 + ("UpBlock2D",) * 3, norm_num_groups=8, attention_head_dim=8,
    ).eval()


def save_unet2d_folder(root, sample_size: int = 32):
    """A DDPM-style pipeline folder: unet/ and scheduler/ (linear betas 1e-4..0.02 over 1000 steps)."""
    from diffusers import DDPMScheduler

    unet = adm_shaped_unet2d(sample_size)
    unet.save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(root / "scheduler")
    return unet


def _tokenizer(folder, max_length: int):
    """A CLIP tokenizer over a 54-token vocabulary (letters, end-of-word letters, BOS, EOS)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(str(folder))
    return tok


def save_sd_folder(root, sample_size: int = 16):
    """A Stable Diffusion folder shaped like SD-1.5 (4 levels: 3 cross-attention down blocks and a plain one,
    25 blocks), with a 2-level VAE (8 -> factor 2), a 2-layer CLIP text encoder and a scaled-linear scheduler."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=sample_size, block_out_channels=(16, 16, 32, 32), layers_per_block=2, cross_attention_dim=24,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=8, attention_head_dim=4,
    ).eval()
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8).eval()
    text = CLIPTextModel(CLIPTextConfig(hidden_size=24, intermediate_size=32, num_attention_heads=2,
                                        num_hidden_layers=2, vocab_size=54, max_position_embeddings=16,
                                        bos_token_id=52, eos_token_id=53, pad_token_id=53)).eval()
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    tok = _tokenizer(root / "tokenizer", max_length=16)
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return unet, vae, text, tok


def tiny_dit(in_channels: int = 4, sample_size: int = 8, depth: int = 3, num_classes: int = 10, seed: int = 0):
    """A DiTTransformer2DModel shaped like DiT-XL/2 (patch 2, learned sigma, adaLN-zero), 2 heads of 8 channels
    (diffusers initialises it as any PyTorch model: no block starts as the identity)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=in_channels,
                                out_channels=2 * in_channels, num_layers=depth, sample_size=sample_size, patch_size=2,
                                num_embeds_ada_norm=num_classes).eval()
    return dit


def save_dit_pipeline(root, sample_size: int = 8, depth: int = 3):
    """A DiT pipeline folder as DiTPipeline.save_pretrained writes it: model_index.json, transformer/, a 2-level
    VAE (factor 2, 4 latent channels) in vae/ and a linear-beta DDIM scheduler in scheduler/."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    dit = tiny_dit(sample_size=sample_size, depth=depth)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    DiTPipeline(transformer=dit, vae=vae, scheduler=scheduler).save_pretrained(root)
    return dit, vae


def dit_on_stand_in_vae(**shape):
    """A DiT of ``random_dit``'s shapes (default DiT-XL/2 on 32x32x4 latents of 256-pixel images) on a tiny random
    VAE with SD's factor 8 and 4 latent channels: for timing and shape checks, where the VAE does not matter."""
    from diffusers import AutoencoderKL

    from difrep.diffusion import GaussianDiffusion
    from difrep.models.dit import DiT, random_dit

    vae = AutoencoderKL(block_out_channels=(8,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4)
    return DiT(random_dit(**shape), GaussianDiffusion(), vae)
