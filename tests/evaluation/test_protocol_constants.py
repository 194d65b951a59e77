"""The evaluation protocols' constants, checked by behaviour: kNN (Table 9: k = 20 and 200, T = 0.07) and
the authors' SGD probe (28 epochs, lr 1e-2, momentum 0.9, StepLR 7 x 0.1, raw features)."""

from __future__ import annotations

import inspect

import pytest
import torch

from difrep.evaluation import knn as knn_module
from difrep.evaluation import linear as linear_module
from difrep.evaluation.knn import knn_accuracy, knn_classify
from difrep.evaluation.linear import sgd_linear_probe

NUM_CLASSES = 10


def _reference_knn_scores(train_x, train_y, test_x, k, temperature):
    """Hand-written weighted kNN in float64: cosine similarity to every training feature, the k most
    similar vote for their class with weight exp(similarity / temperature)."""
    train = train_x.double() / train_x.double().norm(dim=1, keepdim=True)
    test = test_x.double() / test_x.double().norm(dim=1, keepdim=True)
    sims = test @ train.T
    order = sims.argsort(dim=1, descending=True)
    nearest = torch.zeros_like(sims, dtype=torch.bool).scatter(1, order[:, :k], True)
    weights = torch.where(nearest, (sims / temperature).exp(), torch.zeros_like(sims))
    one_hot = torch.nn.functional.one_hot(train_y, NUM_CLASSES).double()
    return weights @ one_hot  # [N_test, classes]: summed weights of the k nearest, per class


def _reference_accuracy(scores, labels):
    """Top-1 and top-5 in %, as (lowest, highest) over the ways of ordering tied scores: a query whose
    class ties with others at the top-k boundary (all at zero votes, say) may count either way."""
    bounds = {}
    for k in (1, 5):
        sure = possible = 0
        for row, y in zip(scores.tolist(), labels.tolist()):
            above = sum(s > row[y] for s in row)
            tied = sum(s == row[y] for s in row) - 1
            sure += above + tied < k
            possible += above < k
        bounds[k] = (100.0 * sure / len(labels), 100.0 * possible / len(labels))
    return bounds


@pytest.fixture(scope="module")
def knn_data():
    """Noisy clusters: close neighbours mostly agree, the 200-neighbourhood mixes classes, so k = 20 and
    k = 200 give different predictions. 300 queries cross the 256-query chunk boundary."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(NUM_CLASSES, 24, generator=gen)
    train_y = torch.randint(0, NUM_CLASSES, (500,), generator=gen)
    test_y = torch.randint(0, NUM_CLASSES, (300,), generator=gen)
    train_x = centers[train_y] + 2.0 * torch.randn(500, 24, generator=gen)
    test_x = centers[test_y] + 2.0 * torch.randn(300, 24, generator=gen)
    refs = {
        (k, temp): _reference_knn_scores(train_x, train_y, test_x, k, temp)
        for k in (20, 200) for temp in (0.07, 0.5)
    }
    return train_x, train_y, test_x, test_y, refs


def test_knn_defaults_are_k_20_and_200_at_temperature_0_07(knn_data):
    train_x, train_y, test_x, test_y, refs = knn_data
    # the data discriminates: k changes the predictions, and so does the temperature
    assert (refs[20, 0.07].argmax(1) != refs[200, 0.07].argmax(1)).sum() >= 10
    assert (refs[200, 0.07].argmax(1) != refs[200, 0.5].argmax(1)).sum() >= 3

    scores = knn_classify(train_x, train_y, test_x, NUM_CLASSES)
    assert sorted(scores) == [20, 200]
    for k in (20, 200):
        expected = refs[k, 0.07]
        torch.testing.assert_close(scores[k].double(), expected, rtol=1e-4, atol=0.0)
        assert torch.equal(scores[k].argmax(1), expected.argmax(1))


def test_knn_accuracy_defaults_match_the_hand_written_knn(knn_data):
    train_x, train_y, test_x, test_y, refs = knn_data
    acc = knn_accuracy(train_x, train_y, test_x, test_y, NUM_CLASSES)
    assert sorted(acc) == [20, 200]
    expected = {k: _reference_accuracy(refs[k, 0.07], test_y) for k in (20, 200)}
    # the top-1 class never ties (exp(.) > 0 votes vs. float sums), so top-1 is exact
    assert all(expected[k][1][0] == expected[k][1][1] for k in (20, 200))
    assert expected[20][1] != expected[200][1], "the data must tell k = 20 from k = 200"
    assert _reference_accuracy(refs[200, 0.5], test_y)[1] != expected[200][1], "and T = 0.07 from T = 0.5"
    for k in (20, 200):
        assert acc[k][1] == pytest.approx(expected[k][1][0], abs=1e-4)  # float32 means
        lo, hi = expected[k][5]
        assert lo - 1e-4 <= acc[k][5] <= hi + 1e-4
    assert expected[200][5][0] == expected[200][5][1], "k = 200: every class gets votes, top-5 is exact"


def test_knn_signature_defaults():
    for fn in (knn_module.knn_classify, knn_module.knn_accuracy):
        params = inspect.signature(fn).parameters
        assert tuple(params["ks"].default) == (20, 200)
        assert params["temperature"].default == 0.07


class _RecordingSGD(torch.optim.SGD):
    """torch.optim.SGD that records the hyper-parameters in force at every step."""

    instances: list[_RecordingSGD] = []

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.seen: list[tuple[float, float]] = []
        _RecordingSGD.instances.append(self)

    def step(self, closure=None):
        group = self.param_groups[0]
        self.seen.append((group["lr"], group["momentum"]))
        return super().step(closure)


class _RecordingLinear(torch.nn.Linear):
    """nn.Linear that records what it is fed while training."""

    inputs: list[torch.Tensor] = []

    def forward(self, x):
        if torch.is_grad_enabled():
            _RecordingLinear.inputs.append(x.detach().clone())
        return super().forward(x)


@pytest.fixture()
def probe_data():
    gen = torch.Generator().manual_seed(0)
    n, dim = 300, 8
    train_y = torch.randint(0, 3, (n,), generator=gen)
    # far from zero mean and unit variance, so standardising would be visible in what the head sees
    train_x = 7.0 + 4.0 * torch.randn(n, dim, generator=gen) + train_y[:, None].float()
    test_y = torch.randint(0, 3, (60,), generator=gen)
    test_x = 7.0 + 4.0 * torch.randn(60, dim, generator=gen) + test_y[:, None].float()
    return train_x, train_y, test_x, test_y


def test_sgd_probe_follows_the_released_schedule_by_default(monkeypatch, probe_data):
    """Defaults: SGD (not Adam), momentum 0.9, lr 1e-2 for epochs 0-6, 1e-3 for 7-13, 1e-4 for 14-20,
    1e-5 for 21-27, and nothing after epoch 28. Observed at every optimizer step, not read off the code."""
    train_x, train_y, test_x, test_y = probe_data
    _RecordingSGD.instances.clear()
    monkeypatch.setattr(torch.optim, "SGD", _RecordingSGD)

    def no_adam(*_a, **_k):
        raise AssertionError("the default optimizer must be SGD")

    monkeypatch.setattr(torch.optim, "Adam", no_adam)
    sgd_linear_probe(train_x, train_y, test_x, test_y, num_classes=3, batch_size=100)
    assert len(_RecordingSGD.instances) == 1
    seen = _RecordingSGD.instances[0].seen
    steps_per_epoch = 3  # 300 samples in batches of 100
    assert len(seen) == 28 * steps_per_epoch, "28 epochs"
    for step, (lr, momentum) in enumerate(seen):
        epoch = step // steps_per_epoch
        assert lr == pytest.approx(1e-2 * 0.1 ** (epoch // 7), rel=1e-9), f"epoch {epoch}"
        assert momentum == 0.9


def test_sgd_probe_sees_raw_features_by_default(monkeypatch, probe_data):
    """The paper's protocol does not standardise: every row the head trains on is a row of train_x."""
    train_x, train_y, test_x, test_y = probe_data
    _RecordingLinear.inputs.clear()
    monkeypatch.setattr(torch.nn, "Linear", _RecordingLinear)
    sgd_linear_probe(train_x, train_y, test_x, test_y, num_classes=3, epochs=1, batch_size=100)
    fed = torch.cat(_RecordingLinear.inputs)
    assert fed.shape == train_x.shape
    # the same multiset of rows, unchanged: sort both by their first column, then compare exactly
    assert torch.equal(fed[fed[:, 0].argsort()], train_x[train_x[:, 0].argsort()])


def test_sgd_probe_signature_defaults():
    params = inspect.signature(linear_module.sgd_linear_probe).parameters
    defaults = {name: p.default for name, p in params.items()}
    assert defaults["epochs"] == 28
    assert defaults["lr"] == 1e-2
    assert defaults["momentum"] == 0.9
    assert defaults["step_epochs"] == 7
    assert defaults["gamma"] == 0.1
    assert defaults["optimizer"] == "sgd"
    assert defaults["standardize"] is False
