"""Sample checks: channel agreement computed by hand, and a reference classifier that names what it learned."""

from __future__ import annotations

import pytest
import torch
from fakes import make_stripes

from difrep.errors import UserError
from difrep.evaluation.samples import Recognition, accuracy, channel_disagreement, sample_recognition
from difrep.training import train_reference_classifier


def test_channel_disagreement_is_the_mean_pairwise_absolute_difference():
    x = torch.zeros(2, 3, 4, 4)
    x[:, 0] = 0.6  # |R-G| = 0.6, |R-B| = 0.6 + 0.2, |G-B| = 0.2 everywhere
    x[:, 2] = -0.2
    assert channel_disagreement(x) == pytest.approx((0.6 + 0.8 + 0.2) / 3)
    assert channel_disagreement(x[:, :1]) == 0.0 and channel_disagreement(x[:, :1].expand(-1, 3, -1, -1)) == 0.0
    with pytest.raises(UserError, match="N, C, H, W"):
        channel_disagreement(x[0])


def test_recognition_counts_confident_names():
    probs = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.1, 0.9]])
    r = Recognition.of(probs, threshold=0.9)
    assert r.confident_rate == pytest.approx(200 / 3) and r.class_counts == [2, 1]
    assert r.mean_confidence == pytest.approx(100 * (0.95 + 0.5 + 0.9) / 3)


def test_the_reference_classifier_learns_and_tells_data_from_noise():
    x, y = make_stripes(300, 0)
    clf = train_reference_classifier(x.expand(-1, 3, -1, -1), y, epochs=3, seed=0)  # RGB grey is read as grey
    test_x, test_y = make_stripes(60, 1)
    assert accuracy(clf, test_x, test_y) > 95
    squares = test_x[test_y == 2]
    seen = sample_recognition(clf, squares, test_x, threshold=0.9)
    assert seen["real"].confident_rate > 90 and seen["real"].class_counts == [20, 20, 20]
    assert seen["samples"].class_counts == [0, 0, 20]
