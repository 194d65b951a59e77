"""The shipped configs/*.yaml load and hold the paper's settings (SPEC.md: heads, blocks, timesteps, protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difrep.models import create_model
from difrep.models.registry import PRESETS
from difrep.pretraining.config import PretrainConfig
from difrep.training import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# SPEC.md, "Heads" and "Training protocol": lr and per-process batch (x 4 GPUs) of each head,
# and the blocks / timesteps it reads. Every file configs/<data>_<head>.yaml is checked against this.
HEADS = {
    "linear": dict(lr=1e-2, batch_size=32, timesteps=[150], blocks=[24]),
    "attention": dict(lr=5e-2, batch_size=32, timesteps=[150], blocks=[24]),
    "difformer": dict(lr=5e-2, batch_size=32, timesteps=[90, 150, 300], blocks=[19, 24, 30]),
    "difeed": dict(lr=1e-2, batch_size=4, timesteps=[150], blocks=[24]),
}
DATASETS = ("imagenet", "folder")
HEAD_CONFIGS = [CONFIGS / f"{data}_{head}.yaml" for data in DATASETS for head in HEADS]
PRETRAIN_CONFIGS = [CONFIGS / "pretrain_fashion_mnist.yaml"]
# Table 15 (ImageNet-50: SimCLR ResNet-50 and MAE ViT-B under the Attention head and transformer fusion) and
# Table 10 (Stable Diffusion, linear probe): backbone, blocks in the paper's numbering, head
SEGMENTATION_CONFIGS = {  # Table 6: blocks, DifFeed feedback
    "ade20k_upernet_gd_b24": ([24], None),
    "ade20k_upernet_gd_multiblock": ([33, 30, 27, 24], None),
    "ade20k_upernet_difeed": ([33, 30, 27, 24], "bottleneck"),
}
BACKBONE_CONFIGS = {
    "imagenet50_simclr_attention": ("timm:resnet50", [4], "attention"),
    "imagenet50_simclr_difformer": ("timm:resnet50", [1, 2, 3, 4], "difformer"),
    "imagenet50_mae_attention": ("timm:vit_base_patch16_224", [12], "attention"),
    "imagenet50_mae_difformer": ("timm:vit_base_patch16_224", [9, 10, 11, 12], "difformer"),
    "imagenet_sd_linear": ("sd:", ["paper:18"], "linear"),
    "imagenet_dit_attention": ("diffusers:", [14], "attention"),
}


def test_every_config_file_is_checked_here():
    """A new config without a check below fails this test."""
    on_disk = sorted(CONFIGS.glob("*.yaml"))
    assert on_disk, f"no configs found in {CONFIGS}"
    others = [CONFIGS / f"{name}.yaml" for name in [*BACKBONE_CONFIGS, *SEGMENTATION_CONFIGS, "scenes_upernet_fmnist",
                                                       "coco_maskrcnn_gd_b24", "scenes_maskrcnn_fmnist"]]
    assert sorted(HEAD_CONFIGS + PRETRAIN_CONFIGS + others) == on_disk


def test_the_fashion_mnist_study_keeps_the_papers_probe_and_full_data():
    from difrep.study import Study, load_study
    from difrep.study.stages.sweep import probe_settings

    study = Study(load_study(CONFIGS / "studies" / "fashion_mnist.yaml"))
    spec = study.spec
    assert spec.data["train_per_class"] is None and spec.data["test_per_class"] is None, "all 60,000 / 10,000 images"
    p = probe_settings(spec.stages["sweep"]["probe"], "sweep.probe")
    assert (p["solver"], p["epochs"], p["lr"], p["step_epochs"], p["gamma"], p["momentum"]) == ("sgd", 28, 1e-2, 7, 0.1, 0.9)
    assert spec.stages["knn"]["ks"] == [20, 200] and sorted(spec.stages["sweep"]["pools"]) == [1, 2, 4]
    assert spec.stages["cka"]["images"] == 2500 and len(spec.seeds) == 3
    strategies = {r["config"]["head"].get("strategy") for r in spec.stages["heads"]["runs"]} - {None}
    assert strategies == {"bottleneck", "all", "windowed", "multi-scale"}
    assert {r["percent"] for r in spec.stages["semi"]["runs"]} == {1, 10}
    assert [s.kind for s in study.stages.values()] == ["samples", "sweep", "knn", "sweep", "pixels", "cka", "train", "train"]


@pytest.mark.parametrize("path", HEAD_CONFIGS, ids=lambda p: p.stem)
def test_head_config_follows_the_papers_protocol(path):
    data, head = path.stem.split("_", 1)
    cfg = load_config(path)
    want = HEADS[head]
    assert cfg.head.name == head
    assert cfg.data.name == data
    # the paper's backbone: the unconditional 256x256 ADM with its public checkpoint
    assert cfg.model.name == "adm-256-uncond"
    assert cfg.model.checkpoint == "256x256_diffusion_uncond.pt"
    assert cfg.features.timesteps == want["timesteps"]
    assert cfg.features.blocks == want["blocks"]
    # the released scripts: SGD, 28 epochs, StepLR every 7 epochs x 0.1, evaluation every 7 epochs
    assert cfg.optim.name == "sgd"
    assert cfg.optim.lr == pytest.approx(want["lr"], rel=1e-12)
    assert cfg.optim.batch_size == want["batch_size"]
    assert cfg.optim.epochs == 28
    assert cfg.optim.schedule == "step"
    assert cfg.optim.step_epochs == 7
    assert cfg.optim.gamma == pytest.approx(0.1, rel=1e-12)
    assert cfg.optim.eval_every == 7
    assert cfg.run.finetune is False, "the paper's heads train on a frozen U-Net"
    if head == "linear":
        assert cfg.head.pool == 2, "the GD linear head pools to 2x2 (4096 features at b=24)"
    if head in ("attention", "difformer", "difeed"):
        assert cfg.head.depth == 2 and cfg.head.dim == 1024 and cfg.head.num_heads == 8
        assert cfg.head.norm == "layernorm"
    if head == "difeed":
        assert cfg.head.strategy == "bottleneck"


@pytest.mark.parametrize("path", PRETRAIN_CONFIGS, ids=lambda p: p.stem)
def test_pretrain_config_builds_the_shipped_model(path):
    """SPEC.md says nothing about pretraining: the config must reproduce the model difrep ships
    (adm-fmnist-28, 1,921,890 parameters, one input channel), trained on Fashion-MNIST."""
    cfg = load_config(path, schema=PretrainConfig)
    assert isinstance(cfg, PretrainConfig)
    assert cfg.data.name == "fashion-mnist" and cfg.data.split == "train"
    assert cfg.model.name == "adm"
    model = create_model(cfg.model.name, **cfg.model.flags)
    shipped = PRESETS["adm-fmnist-28"].config
    assert model.config == shipped
    assert sum(p.numel() for p in model.parameters()) == 1_921_890
    assert cfg.optim.steps > 0 and cfg.optim.batch_size > 0 and 0 < cfg.optim.lr < 1e-2
    assert 0 < cfg.optim.ema_decay < 1


def test_a_head_config_refuses_the_pretrain_schema_and_vice_versa():
    """The two schemas are not interchangeable: loading with the wrong one is an error, not silent defaults."""
    with pytest.raises(ValueError, match="unknown option"):
        load_config(HEAD_CONFIGS[0], schema=PretrainConfig)
    with pytest.raises(ValueError, match="unknown option"):
        load_config(PRETRAIN_CONFIGS[0])


def test_a_config_starts_from_its_base_and_replaces_section_by_section(tmp_path):
    from difrep.training import load_config as load

    (tmp_path / "a.yaml").write_text("head: {name: attention, depth: 4}\noptim: {lr: 0.05, epochs: 10}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim: {lr: 0.01}\n")
    cfg = load(tmp_path / "b.yaml", ["optim.epochs=3"])
    assert (cfg.head.name, cfg.head.depth, cfg.optim.lr, cfg.optim.epochs) == ("attention", 4, 0.01, 3)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"missing.yaml: no such file \(the base of .*e.yaml\)"):
        load(tmp_path / "e.yaml")


@pytest.mark.parametrize("name", BACKBONE_CONFIGS)
def test_other_backbone_configs_follow_tables_15_and_10(name, tmp_path):
    from backbone_factories import save_sd_folder

    from difrep.training.trainer import block_shapes, build_head

    backbone, blocks, head = BACKBONE_CONFIGS[name]
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name.startswith(backbone) and cfg.head.name == head and cfg.run.finetune is False
    assert cfg.optim.name == "sgd" and cfg.optim.epochs == (15 if backbone == "sd:" else 28)
    if backbone == "diffusers:":
        _check_dit_xl_config(cfg)
        return
    if backbone == "sd:":
        save_sd_folder(tmp_path)  # the same 25-block layout as SD-1.5: the paper's b = 18 by name
        sd = create_model(f"sd:{tmp_path}")
        assert cfg.features.blocks == sd.validate_blocks(blocks) and cfg.model.flags["image_size"] == 512
        return
    assert cfg.data.name == "imagenet-50" and cfg.features.blocks == blocks
    with torch.device("meta"):
        model = create_model(cfg.model.name, **cfg.model.flags)
    heads = build_head(cfg, 50, block_shapes(model, cfg.features.blocks))
    params = sum(p.numel() for p in heads.parameters())
    if name == "imagenet50_simclr_attention":
        assert round(params / 1e6, 1) == 27.5, "Table 15: the Attention head on SimCLR block 4 has 27.5M parameters"
    assert 26e6 < params < 30.5e6, "Table 15 lists 26.0M to 30.0M for these heads"


def _check_dit_xl_config(cfg) -> None:
    """DiT-XL/2 at 256 pixels: the middle of its 28 blocks, 16 x 16 tokens of width 1152, the GD Attention protocol."""
    from backbone_factories import dit_on_stand_in_vae

    from difrep.training.trainer import block_shapes, build_head

    with torch.device("meta"):
        dit = dit_on_stand_in_vae(size="XL")
    assert cfg.features.blocks == [dit.middle_block_index] == [14] and cfg.features.timesteps == [150]
    assert (dit.block_info(14).num_chs, dit.block_info(14).resolution, dit.image_size) == (1152, 16, 256)
    assert (cfg.data.name, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.step_epochs) == ("imagenet", 0.05, 32, 7)
    assert (cfg.head.dim, cfg.head.depth, cfg.head.num_heads) == (1024, 2, 8), "the paper's Attention head"
    heads = build_head(cfg, 1000, block_shapes(dit, cfg.features.blocks))
    assert sum(p.numel() for p in heads.parameters()) > 0


@pytest.mark.parametrize("name", SEGMENTATION_CONFIGS)
def test_segmentation_configs_follow_table_6_and_the_mae_recipe(name):
    from difrep.dense import load_segmentation_config

    blocks, feedback = SEGMENTATION_CONFIGS[name]
    cfg = load_segmentation_config(CONFIGS / f"{name}.yaml")
    assert cfg.task == "segmentation" and cfg.model.name == "adm-256-uncond"
    assert cfg.features.timesteps == [90] and cfg.features.blocks == blocks and cfg.features.feedback == feedback
    assert (cfg.optim.batch_size, cfg.optim.iterations, cfg.optim.lr) == (2, 16_000, 2e-5), "the paper's settings"
    assert (cfg.optim.name, cfg.optim.weight_decay, cfg.optim.warmup) == ("adamw", 0.05, 1500), "MAE's recipe"
    assert (cfg.data.crop, cfg.data.scale, cfg.data.ratio_range) == (512, [2048, 512], [0.5, 2.0])
    assert (cfg.head.channels, cfg.head.decoder_channels, cfg.head.aux_weight) == (1024, 1024, 0.4)
    assert cfg.run.slide and cfg.run.stride == 341 and cfg.features.input_size == 256
    with torch.device("meta"):
        model = create_model(cfg.model.name)
    sizes = [model.block_info(b).resolution for b in blocks]
    assert sizes == ([16] if len(blocks) == 1 else [128, 64, 32, 16]), "a ViT-L UperNet's input shapes"


def test_the_scenes_config_runs_the_shipped_model_at_the_scenes_size():
    from difrep.dense import load_segmentation_config

    cfg = load_segmentation_config(CONFIGS / "scenes_upernet_fmnist.yaml")
    assert cfg.task == "segmentation" and cfg.data.name == "scenes" and cfg.data.crop == 84
    assert cfg.model.name == "adm-fmnist-28" and cfg.model.pretrained and not cfg.run.finetune
    assert cfg.features.input_size == cfg.data.crop, "garments keep the 28-pixel scale the model was trained at"
    assert len(cfg.features.timesteps) == 1 and len(cfg.features.blocks) == 1


def test_the_coco_config_follows_figure_8_and_the_vitdet_recipe():
    from difrep.dense import DetectionBackbone, load_detection_config

    cfg = load_detection_config(CONFIGS / "coco_maskrcnn_gd_b24.yaml")
    assert cfg.task == "detection" and cfg.model.name == "adm-256-uncond" and not cfg.run.finetune
    assert (cfg.features.timesteps, cfg.features.blocks) == ([75], [24]), "Figure 8's t and b"
    assert (cfg.optim.epochs, cfg.optim.batch_size) == (10, 4), "the paper's schedule"
    assert (cfg.data.size, cfg.data.scale_range, cfg.optim.weight_decay, cfg.optim.milestones) == (
        1024, [0.1, 2.0], 0.1, [0.889, 0.963]), "ViTDet's recipe"
    assert (cfg.head.box_head, cfg.head.mask_convs, cfg.head.rpn_convs, cfg.head.out_channels) == ("conv", 4, 2, 256)
    with torch.device("meta"):
        model = create_model(cfg.model.name)
        backbone = DetectionBackbone(model, 75, 24, cfg.features.input_size, cfg.data.size)
    info = model.block_info(24)
    assert info.reduction == 16 and backbone.unet_size(1024, 1024) == (1024, 1024), "b = 24 is the stride-16 map"


def test_the_scenes_detection_config_sees_garments_at_the_trained_scale():
    from difrep.dense import load_detection_config

    cfg = load_detection_config(CONFIGS / "scenes_maskrcnn_fmnist.yaml")
    assert cfg.task == "detection" and cfg.model.name == "adm-fmnist-28" and cfg.model.pretrained
    scenes = 84
    assert cfg.features.input_size == scenes and cfg.data.size % 32 == 0, "the U-Net sees scenes at their 84 px"
    assert (cfg.features.timesteps, cfg.features.blocks) == ([50], [13]), "the segmentation study's choice"
