"""The sample checks' reference classifier, trained on the engine: it learns, logs, and resumes from its folder."""

from __future__ import annotations

import csv

import pytest
import torch
from fakes import make_stripes

from difrep.errors import UserError
from difrep.evaluation.samples import accuracy
from difrep.training import ReferenceClassifierTask, train_reference_classifier


def test_it_trains_on_the_engine_and_resumes_from_its_folder(device, tmp_path, monkeypatch):
    x, y = make_stripes(300, 0)
    clf = train_reference_classifier(x, y, epochs=2, seed=0, out=tmp_path, device=device)
    assert next(clf.parameters()).device.type == "cpu" and not clf.training
    test_x, test_y = make_stripes(60, 1)
    assert accuracy(clf, test_x, test_y) > 95
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[1]["lr"]) == pytest.approx(1e-3)
    assert (tmp_path / "last.pt").is_file()

    def never(*args, **kwargs):
        raise AssertionError("a finished run trains no further")

    monkeypatch.setattr(ReferenceClassifierTask, "loss", never)
    again = train_reference_classifier(x, y, epochs=2, seed=0, out=tmp_path, device=device)
    for (name, a), b in zip(clf.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match="another config"):
        train_reference_classifier(x, y, epochs=2, seed=1, out=tmp_path, device=device)


def test_the_same_seed_gives_the_same_classifier_and_bad_inputs_are_refused(device):
    x, y = make_stripes(40, 0)
    one, two = (train_reference_classifier(x, y, epochs=1, batch_size=16, seed=3, device=device) for _ in range(2))
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match="40 images but 39 labels"):
        train_reference_classifier(x, y[:-1], device=device)
    with pytest.raises(UserError, match="epochs=0"):
        train_reference_classifier(x, y, epochs=0, device=device)
