"""Block numbering, feature_info and parameter counts of the paper's backbone (SPEC.md)."""

from __future__ import annotations

import pytest
import torch
from reference import randomize_

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


def test_mirror_block_has_the_resolution_of_the_decoder_blocks_input(adm256):
    """Decoder block b concatenates the skip of encoder block mirror(b) with the output of block b - 1, so
    both have the same spatial size; b itself is twice as large when it ends with an upsample (SPEC.md's
    table: 22, 25, 28, 31, 34 for the 256 model)."""
    info = {i.index: i for i in adm256.feature_info}
    decoder = [i.index for i in adm256.feature_info if i.stage == "decoder"]
    assert decoder == list(range(20, 38))
    mirrors = [adm256.mirror_block(b) for b in decoder]
    assert sorted(mirrors) == list(range(1, 19)), "every encoder skip is consumed exactly once"
    upsampling = set()
    for b, e in zip(decoder, mirrors):
        assert info[e].stage == "encoder"
        assert info[e].resolution == info[b - 1].resolution, (b, e)
        if info[b].resolution != info[e].resolution:
            assert info[b].resolution == 2 * info[e].resolution, (b, e)
            upsampling.add(b)
    assert upsampling == {22, 25, 28, 31, 34}
    assert info[24].resolution == info[adm256.mirror_block(24)].resolution == 16


def _decoder_block_reading_the_skip_of(model, e, x, t, plain):
    """Perturb only the skip of encoder block e and return the first decoder block whose output changes.

    Adding a tensor to block e's output (``feedback``) also changes the main path, hence the middle block
    and every decoder block. So the change is cancelled again right after block e + 1 (a second feedback
    equal to plain - perturbed output of e + 1): from there on the main path and the later skips are
    the plain ones, and only the skip of e differs. Block e = N (the last encoder block) feeds the middle
    block directly; its change cannot be cancelled, and the first decoder block must change anyway.
    """
    n = model.num_encoder_blocks
    info = {i.index: i for i in model.feature_info}
    gen = torch.Generator().manual_seed(e)
    delta = torch.randn(x.shape[0], info[e].num_chs, info[e].resolution, info[e].resolution, generator=gen)
    feedback = {e: delta.to(x)}
    with torch.no_grad():
        if e < n:
            moved = model.forward_intermediates(x, t, indices=[e + 1], stop_early=True, feedback=feedback)[e + 1]
            feedback[e + 1] = plain[e + 1] - moved
        got = model.forward_intermediates(x, t, stop_early=False, feedback=feedback)
    scale = {b: plain[b].abs().max().item() for b in plain}
    changed = [b for b in plain if (got[b] - plain[b]).abs().max().item() > 1e-6 * scale[b]]
    assert e in changed
    if e < n:
        # the cancellation worked: nothing on the main path after e changed
        assert [b for b in changed if b <= n + 1] == [e]
    first_decoder = [b for b in changed if b > n + 1][0]
    # from the first changed decoder block on, everything after it changes through the main path
    assert changed[changed.index(first_decoder):] == list(range(first_decoder, model.num_blocks + 1))
    return first_decoder


@pytest.mark.parametrize(
    "flags",
    [
        dict(image_size=32, num_channels=32, channel_mult="1,2,2", attention_resolutions="16,8",
             num_head_channels=8, resblock_updown=True, learn_sigma=True),
        dict(image_size=32, num_channels=32, channel_mult="1,2,2,2", num_res_blocks=1, attention_resolutions="8"),
    ],
    ids=["paper-like", "upsample-conv"],
)
def test_decoder_block_reads_the_skip_of_its_mirror(device, flags):
    """Behaviour, not the formula: the first decoder block that sees a change made only to encoder block
    e's skip is the one that concatenates it, and mirror_block must name e for it."""
    torch.manual_seed(0)
    model = randomize_(create_model("adm", **flags)).eval().to(device=device, dtype=torch.float64)
    n = model.num_encoder_blocks
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device, torch.float64)
    t = torch.tensor([150, 600], device=device)
    with torch.no_grad():
        plain = model.forward_intermediates(x, t, stop_early=False)
    observed = {e: _decoder_block_reading_the_skip_of(model, e, x, t, plain) for e in range(1, n + 1)}
    assert sorted(observed.values()) == list(range(n + 2, 2 * n + 2)), "each decoder block reads one skip"
    for e, d in observed.items():
        assert model.mirror_block(d) == e, f"encoder block {e}'s skip is read by decoder block {d}"


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
