"""chunk_size="auto": the measured activation cost, the chunk it allows, and the memory the chunks then take."""

from __future__ import annotations

import pytest
import torch

from difrep import FeatureExtractor
from difrep.features import memory
from difrep.features.memory import ActivationCost, LiveStorageMeter, available_bytes, measure_peak

MIB = 2**20


def test_the_meter_follows_storages_until_they_are_freed():
    x = torch.ones(MIB // 4)  # 1 MiB of float32, made before: never counted
    with LiveStorageMeter() as meter:
        a = x * 2
        b = a + 1
        view = b.view(2, -1)  # shares b's storage
        del a
        c = view * 3  # a was freed first: 2 MiB live at most
    assert meter.peak == 2 * MIB
    with LiveStorageMeter() as meter:
        a = x * 2
        b = a + 1
        c = b * 3  # noqa: F841 - kept alive: 3 MiB
    assert meter.peak == 3 * MIB


@pytest.mark.parametrize("grad", [True, False])
def test_the_meter_counts_what_autograd_keeps_for_the_backward(grad):
    w = torch.ones(MIB // 4, requires_grad=grad)
    with LiveStorageMeter() as meter:
        y = w.exp()
        z = y.sin()  # sin saves its input y for the backward
        del y  # freed only without autograd
        z2 = z * 2  # noqa: F841
    assert meter.peak == (3 if grad else 2) * MIB


@pytest.mark.skipif(memory.CPU_METHOD != "rss", reason="Linux with glibc only")
def test_the_resident_peak_counts_what_a_forward_allocates():
    """RSS counts buffers that no tensor owns (oneDNN's reorders); freed memory is trimmed first, so memory
    an earlier call left in the heap does not hide the next one's."""
    x = torch.ones(16 * MIB // 4)
    for _ in range(2):
        _, peak = measure_peak(lambda: (x * 2) + (x * 3), "cpu")  # three 16 MiB tensors at once
        assert 44 * MIB <= peak <= 56 * MIB  # three tensors, not two; pages already resident may be reused


def test_cost_arithmetic():
    cost = ActivationCost.from_peaks(one=130, many=230)
    assert (cost.fixed_bytes, cost.per_input_bytes) == (30, 100)
    assert ActivationCost.from_peaks(one=130, many=430, n=4) == cost
    for budget in (0, 129, 130, 999, 1030, 1031):
        n = cost.max_inputs(budget)
        assert cost.fixed_bytes + n * cost.per_input_bytes <= budget or n == 0
        assert cost.fixed_bytes + (n + 1) * cost.per_input_bytes > budget


def test_auto_chunks_fit_the_budget_and_the_next_size_would_not(unet_on, device, monkeypatch):
    monkeypatch.setattr(memory, "CPU_METHOD", "storages")  # exact on a tiny model; RSS moves by whole pages
    timesteps, blocks = [90, 300], [6, 14]
    probe = FeatureExtractor(unet_on, timesteps, blocks, memory_budget=10**12)
    images = torch.rand(2, 3, 32, 32, device=device) * 2 - 1
    probe(images, indices=[0, 1])
    cost = next(iter(probe.activation_costs.values()))
    assert cost.per_input_bytes > 0
    budget = cost.fixed_bytes + int(4.5 * cost.per_input_bytes)
    ex = FeatureExtractor(unet_on, timesteps, blocks, memory_budget=budget)
    sizes = []
    original = unet_on.forward_intermediates

    def recording(x, *args, **kwargs):
        sizes.append(len(x))
        return original(x, *args, **kwargs)

    unet_on.forward_intermediates = recording
    n = 5
    images = torch.rand(n, 3, 32, 32, device=device) * 2 - 1
    out = ex(images, indices=list(range(n)))
    del unet_on.forward_intermediates
    assert sizes == [1, 1, memory.PROBE_INPUTS, 4, 4, 2], "warm-up, two probes, then chunks of 4 over 5 x 2 inputs"

    def forward(k: int) -> None:
        x = torch.randn(k, 3, 32, 32, device=device)
        with torch.no_grad():
            unet_on.forward_intermediates(x, torch.full((k,), 90, device=device), indices=blocks, stop_early=True)

    assert measure_peak(lambda: forward(4), device)[1] <= budget < measure_peak(lambda: forward(5), device)[1]
    whole = FeatureExtractor(unet_on, timesteps, blocks, chunk_size=64)(images, indices=list(range(n)))
    for key in whole:
        torch.testing.assert_close(out[key], whole[key], rtol=1e-5, atol=1e-5)


def test_auto_chunks_of_a_small_model_are_measured_and_capped_on_a_cpu(device):
    """The 28-pixel model's activations are a few MiB an input, which a probe of one and two inputs measured as
    1 byte (so every batch ran whole, at half the speed of chunks of 64); a CPU never takes more than
    CPU_MAX_CHUNK, an accelerator takes what fits."""
    from difrep import create_model

    with pytest.warns(UserWarning, match="random weights"):
        model = create_model("adm-fmnist-28", pretrained=False).eval().to(device)
    ex = FeatureExtractor(model, [5, 50], list(range(1, 20)), pool=2, memory_budget=10**12)
    ex(torch.rand(3, 3, 28, 28, device=device) * 2 - 1, indices=[0, 1, 2])
    cost, chunk = next(iter(ex.activation_costs.values())), next(iter(ex.auto_chunks.values()))
    if device.type == "cpu" and memory.CPU_METHOD == "rss":
        assert cost.per_input_bytes > 2**20, "19 blocks of 32-64 channels at 7-28 pixels: MiBs an input"
    assert (chunk == memory.CPU_MAX_CHUNK) == (device.type == "cpu")
    assert chunk >= memory.CPU_MAX_CHUNK


def test_auto_chunks_do_not_depend_on_what_was_extracted_first(unet):
    """The probes run on throwaway inputs, so a batch is chunked the same by an extractor that has already
    measured (a cache extracted in one go) and by a fresh one (a resumed cache), bit for bit."""
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    budget = 10**12
    ex = FeatureExtractor(unet, [90, 300], [14], memory_budget=budget)
    ex(images[:3], indices=[0, 1, 2])
    later = ex(images[3:], indices=[3, 4, 5])
    fresh = FeatureExtractor(unet, [90, 300], [14], memory_budget=budget)(images[3:], indices=[3, 4, 5])
    for key in later:
        assert torch.equal(later[key], fresh[key])


def test_free_memory_is_known_on_this_machine(device):
    free = available_bytes(device)
    assert free is not None and free > 0
    assert available_bytes("meta") is None


def test_bad_chunk_settings_are_refused(unet):
    with pytest.raises(ValueError, match="chunk_size=0"):
        FeatureExtractor(unet, [90], [14], chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size='big'"):
        FeatureExtractor(unet, [90], [14], chunk_size="big")
    with pytest.raises(ValueError, match="memory_budget=-1"):
        FeatureExtractor(unet, [90], [14], memory_budget=-1)

