"""kNN, CKA and the probes against hand computations, known properties and independent NumPy code."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from reference import cka_numpy

from difrep.evaluation import (
    MinibatchCKA,
    cka_matrix,
    knn_accuracy,
    knn_classify,
    lbfgs_logistic_probe,
    linear_cka,
    sgd_linear_probe,
    topk_accuracy,
)
from difrep.evaluation.cka import _unbiased_hsic


def test_knn_matches_a_hand_computation():
    train = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 1])
    query = torch.tensor([[2.0, 1.0]])
    scores = knn_classify(train, labels, query, num_classes=3, ks=(2, 4), temperature=0.5)
    # by hand: cosine of the query with each training point, then exp(cos / T) votes
    q = np.array([2.0, 1.0]) / math.sqrt(5)
    cos = [float(q @ (np.array(v) / np.linalg.norm(v))) for v in train.tolist()]
    order = sorted(range(4), key=lambda i: -cos[i])
    for k in (2, 4):
        expected = [0.0, 0.0, 0.0]
        for i in order[:k]:
            expected[int(labels[i])] += math.exp(cos[i] / 0.5)
        torch.testing.assert_close(scores[k][0], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert scores[2][0].argmax() == 2


def test_knn_accuracy_on_separated_clusters_and_chunking():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=gen) * 5
    train_y = torch.arange(5).repeat_interleave(30)
    test_y = torch.arange(5).repeat_interleave(10)
    train = centers[train_y] + torch.randn(150, 16, generator=gen)
    test = centers[test_y] + torch.randn(50, 16, generator=gen)
    acc = knn_accuracy(train, train_y, test, test_y, num_classes=5, ks=(20, 200))
    assert acc[20][1] == 100.0 and acc[200][5] == 100.0
    a = knn_classify(train, train_y, test, 5, ks=(20,), chunk_size=7)[20]
    b = knn_classify(train, train_y, test, 5, ks=(20,), chunk_size=1000)[20]
    torch.testing.assert_close(a, b)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.3, 0.3, 0.4]])
    acc = topk_accuracy(scores, torch.tensor([1, 1, 0]), ks=(1, 2))
    assert acc[1] == pytest.approx(100 / 3) and acc[2] == pytest.approx(100.0)



def test_cka_properties_and_known_values():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 8, generator=gen).double(), torch.randn(60, 5, generator=gen).double()
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen).double())
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), abs=1e-10), "orthogonal invariance"
    assert linear_cka(3.7 * x, y) == pytest.approx(linear_cka(x, y), abs=1e-10), "isotropic scaling invariance"
    assert linear_cka(x, y) == pytest.approx(cka_numpy(x.numpy().astype(float), y.numpy().astype(float)), abs=1e-10)
    assert linear_cka(x, x @ torch.randn(8, 8, generator=gen).double()) < 1.0


def test_unbiased_hsic_is_the_u_statistic():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, generator=gen).double(), torch.randn(7, 2, generator=gen).double()
    k, l = x @ x.T, y @ y.T
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(7), 4):
        total += float(k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q])
        count += 1
    assert _unbiased_hsic(k, l).item() == pytest.approx(total / count, rel=1e-9)


def test_minibatch_cka_is_close_to_the_full_value():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(2000, 6, generator=gen)
    xs = [base @ torch.randn(6, 10, generator=gen), torch.randn(2000, 10, generator=gen)]
    ys = [base + 0.5 * torch.randn(2000, 6, generator=gen)]
    full = cka_matrix(xs, ys)
    mini = cka_matrix(xs, ys, batch_size=250)
    assert (full - mini).abs().max() < 0.03
    assert full[0, 0] > 0.5 > full[1, 0]
    with pytest.raises(ValueError, match="at least 4"):
        MinibatchCKA(1, 1).update([torch.randn(3, 2)], [torch.randn(3, 2)])


@pytest.fixture(scope="module")
def separable():
    gen = torch.Generator().manual_seed(3)
    y = torch.arange(4).repeat(150)
    directions = torch.eye(20)[:4] * 4
    x = directions[y] + torch.randn(600, 20, generator=gen) + 1  # separable with a margin
    return x[:400], y[:400], x[400:], y[400:]


def test_probes_recover_a_linearly_separable_problem(separable):
    train_x, train_y, test_x, test_y = separable
    lbfgs = lbfgs_logistic_probe(train_x, train_y, test_x, test_y, num_classes=4)
    sgd = sgd_linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=28)
    assert lbfgs.top1 > 97 and sgd.top1 > 93
    assert lbfgs.details["l2"] in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    chance = sgd_linear_probe(train_x, train_y[torch.randperm(400)], test_x, test_y, num_classes=4, epochs=5)
    assert chance.top1 < 60, "shuffled labels must not be learnable"
