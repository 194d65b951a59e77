"""Evaluations run where their inputs live, and exact CKA never forms a D x D matrix."""

from __future__ import annotations

import pytest
import torch
from reference import cka_numpy

from difrep.evaluation import MinibatchCKA, cka_matrix, knn_accuracy, linear_cka, sgd_linear_probe
from difrep.evaluation.knn import knn_classify


def test_exact_cka_of_full_feature_maps_uses_n_by_n_memory():
    """b = 24 without pooling has D = 1024 x 16 x 16 = 262,144: a D x D matrix would need 550 GB."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(12, 3, generator=gen)  # low-rank maps, so that the Gram matrices have structure
    x = (z @ torch.randn(3, 262_144, generator=gen)).view(12, 1024, 16, 16)
    y = ((z + torch.randn(12, 3, generator=gen)) @ torch.randn(3, 262_144, generator=gen)).view(12, 1024, 16, 16)
    expected = cka_numpy(x.flatten(1).double().numpy(), y.flatten(1).double().numpy())
    assert 0.1 < expected < 0.95
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-9)
    matrix = cka_matrix([x, y], [y, x[:, :8]])
    assert matrix[0, 0].item() == pytest.approx(expected, rel=1e-9)
    assert matrix[1, 0].item() == pytest.approx(1.0, rel=1e-9)
    assert matrix[0, 1].item() == pytest.approx(
        cka_numpy(x.flatten(1).double().numpy(), x[:, :8].flatten(1).double().numpy()), rel=1e-9)


def test_narrow_and_wide_forms_agree():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 10, generator=gen), torch.randn(30, 50, generator=gen)
    assert linear_cka(x, y) == pytest.approx(cka_numpy(x.double().numpy(), y.double().numpy()), rel=1e-9)
    assert cka_matrix([x], [y])[0, 0].item() == pytest.approx(linear_cka(x, y), rel=1e-12)


def test_evaluations_allocate_on_their_inputs_device():
    """The meta device refuses to mix with CPU tensors, so a tensor made without device= fails here as it
    would on a GPU (the CPU-only machine's stand-in for CUDA)."""
    train, test = torch.empty(50, 8, device="meta"), torch.empty(7, 8, device="meta")
    labels = torch.zeros(50, dtype=torch.long, device="meta")
    scores = knn_classify(train, labels, test, num_classes=3, ks=(5,))
    assert scores[5].device.type == "meta" and scores[5].shape == (7, 3)
    acc = MinibatchCKA(1, 1)
    acc.update([torch.empty(6, 4, device="meta")], [torch.empty(6, 3, device="meta")])
    assert acc.compute().device.type == "meta"


def test_knn_and_probe_on_the_device_equal_the_cpu(device):
    gen = torch.Generator().manual_seed(2)
    y = torch.arange(3).repeat(40)
    x = torch.eye(6)[y] * 3 + torch.randn(120, 6, generator=gen)
    cpu = knn_accuracy(x[:90], y[:90], x[90:], y[90:], 3, ks=(5, 20))
    here = knn_accuracy(x[:90].to(device), y[:90].to(device), x[90:].to(device), y[90:].to(device), 3, ks=(5, 20))
    assert {k: pytest.approx(v) for k, v in cpu.items()} == here
    a = sgd_linear_probe(x[:90], y[:90], x[90:], y[90:], 3, epochs=10, lr=0.05)
    b = sgd_linear_probe(x[:90].to(device), y[:90].to(device), x[90:].to(device), y[90:].to(device), 3, epochs=10, lr=0.05)
    assert (a.top1, a.top5) == pytest.approx((b.top1, b.top5)) and a.top1 > 80
