"""Block numbering, feature_info and parameter counts of the paper's backbone (SPEC.md)."""

from __future__ import annotations

import pytest
import torch

from difrep.models import create_model

# SPEC.md's table for the 256x256 model: (first block, last block, channels, spatial size)
SPEC_256 = [
    (1, 3, 256, 256), (4, 6, 256, 128), (7, 7, 256, 64), (8, 9, 512, 64), (10, 12, 512, 32),
    (13, 13, 512, 16), (14, 15, 1024, 16), (16, 18, 1024, 8), (19, 19, 1024, 8), (20, 21, 1024, 8),
    (22, 24, 1024, 16), (25, 25, 1024, 32), (26, 27, 512, 32), (28, 28, 512, 64), (29, 30, 512, 64),
    (31, 31, 512, 128), (32, 33, 256, 128), (34, 37, 256, 256),
]


@pytest.fixture(scope="module")
def adm256():
    with torch.device("meta"):
        return create_model("adm-256-uncond")


def test_block_table_matches_spec(adm256):
    expected = {b: (c, s) for lo, hi, c, s in SPEC_256 for b in range(lo, hi + 1)}
    got = {info.index: (info.num_chs, info.resolution) for info in adm256.feature_info}
    assert got == expected
    assert adm256.num_blocks == 37


def test_feature_info_names_the_modules(adm256):
    modules = dict(adm256.named_modules())
    for info in adm256.feature_info:
        assert info.module in modules
        assert info.reduction * info.resolution == 256
    assert adm256.feature_info[18].module == "middle_block"
    assert adm256.feature_info[18].stage == "middle"
    assert [i.stage for i in adm256.feature_info].count("decoder") == 18


def test_parameter_count_is_the_papers(adm256):
    """SPEC: 552.8M parameters [Table 8: 553M]."""
    assert round(sum(p.numel() for p in adm256.parameters()) / 1e6, 1) == 552.8


def test_decoder_mirrors_encoder(adm256):
    """Decoder block b mirrors encoder block 38 - b, which has the same resolution (SPEC.md)."""
    info = {i.index: i for i in adm256.feature_info}
    for b in range(20, 38):
        assert adm256.mirror_block(b) == 38 - b
    assert info[24].resolution == info[14].resolution == 16


@pytest.mark.parametrize(
    "flags, num_blocks",
    [
        (dict(image_size=64, num_channels=32, num_res_blocks=2), 2 * (1 + 4 * 2 + 3) + 1),
        (dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2"), 2 * (1 + 2 + 1) + 1),
    ],
)
def test_numbering_rule_holds_for_any_configuration(flags, num_blocks):
    """One block per module-list entry: inputs, then middle, then outputs."""
    model = create_model("adm", **flags)
    assert model.num_blocks == num_blocks == len(model.input_blocks) + 1 + len(model.output_blocks)
    n = len(model.input_blocks)
    assert [i.module for i in model.feature_info] == (
        [f"input_blocks.{k}" for k in range(n)] + ["middle_block"] + [f"output_blocks.{k}" for k in range(n)]
    )


def test_unknown_flag_and_model_are_named():
    with pytest.raises(ValueError, match="unknown model 'adm-999'.*adm-256-uncond"):
        create_model("adm-999")
    with pytest.raises(ValueError, match=r"unknown flag\(s\) \['num_chanels'\]"):
        create_model("adm", num_chanels=64)
    with pytest.raises(ValueError, match="use_fp16 is a run-time choice"):
        create_model("adm", use_fp16=True)
    with pytest.raises(ValueError, match="image_size=48 has no default channel_mult"):
        create_model("adm", image_size=48)
