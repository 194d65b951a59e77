"""prune_intermediate_layers: a feature-only U-Net keeps exactly the blocks up to the deepest one asked for."""

from __future__ import annotations

import copy

import pytest
import torch


@pytest.mark.parametrize("last", [4, 10, 14])
def test_pruned_model_gives_the_same_features(unet, device, last):
    full = copy.deepcopy(unet).to(device)
    pruned = copy.deepcopy(unet).to(device)
    assert pruned.prune_intermediate_layers([2, last]) == last
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.tensor([10, 500], device=device)
    with torch.no_grad():
        a = full.forward_intermediates(x, t, indices=[2, last], stop_early=True)
        b = pruned.forward_intermediates(x, t, indices=[2, last])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert pruned.num_blocks == last and [i.index for i in pruned.feature_info] == list(range(1, last + 1))
    kept = {n.split(".")[0] + "." + n.split(".")[1] for n, _ in pruned.named_parameters() if n.count(".") > 1}
    modules = {i.module for i in full.feature_info[:last]}
    assert {m for m in kept if m.startswith(("input_blocks", "output_blocks"))} == \
        {m for m in modules if m.startswith(("input_blocks", "output_blocks"))}
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in full.parameters())


def test_pruned_blocks_and_output_are_refused_by_name(unet):
    pruned = copy.deepcopy(unet)
    pruned.prune_intermediate_layers([12])
    assert pruned.mirror_block(12) == unet.mirror_block(12), "block numbers keep their meaning"
    with pytest.raises(ValueError, match=r"\[13\] are not in this model: it was pruned after block 12"):
        pruned.forward_intermediates(torch.zeros(1, 3, 32, 32), 5, indices=[13])
    with pytest.raises(ValueError, match="pruned"):
        pruned(torch.zeros(1, 3, 32, 32), 5)
