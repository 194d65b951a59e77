"""The demo study: settings chosen from held-out numbers, verdicts that follow the numbers, and a full run."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from difrep.cli.main import main
from difrep.data import DEBIAN_FASHION_MNIST
from difrep.demo import choose_settings, findings
from difrep.evaluation.sweep import SweepRow
from difrep.models import create_model


def _row(t: int, b: int, val: float, test: float = 50.0) -> SweepRow:
    return SweepRow(t, b, 2, 256, val, test, 90.0, val, test, 1e-4)


def test_settings_come_from_held_out_accuracy():
    with __import__("torch").device("meta"):
        model = create_model("adm-fmnist-28")
    t_score = {10: 0, 50: 8, 150: 10, 300: 9, 600: 1}
    val = {(t, b): 50 + t_score[t] - abs(b - 13) for t in t_score for b in range(1, 20)}
    val[(600, 1)] = 10.0
    rows = [_row(t, b, v, test=100 - v) for (t, b), v in val.items()]  # test accuracy disagrees: must be ignored
    s = choose_settings(rows, model)
    assert (s["t"], s["b"], s["pool"]) == (150, 13, 2)
    assert s["T"] == [50, 150, 300] and s["B"] == [12, 13, 14] and s["difeed_block"] == 13
    rows = [_row(t, b, 50 + t_score[t] - abs(b - 6)) for t, b in val]
    assert choose_settings(rows, model)["difeed_block"] == 11, "DifFeed needs a decoder block: the best one"


def _summary(trained: float, random: float, pixels: float, best_t: int, best_b: int, heads: dict) -> dict:
    return {
        "best": asdict(_row(best_t, best_b, 80, trained)), "random_best": asdict(_row(10, 3, 60, random)),
        "pixels": {"test_top1": pixels, "val_top1": 0, "dim": 784},
        "rows": [asdict(_row(t, 1, 0)) for t in (10, 150, 600)], "num_blocks": 19, "middle_block": 10,
        "heads": [{"name": k, "mean": sum(v) / len(v), "std": __import__("statistics").stdev(v)} for k, v in heads.items()],
    }


def test_verdicts_follow_the_numbers():
    heads = {"Logistic regression (L-BFGS)": [80, 81, 82], "Attention": [85, 86, 87], "DifFormer": [85.5, 86.5, 87.5],
             "DifFeed": [84, 85, 86]}
    verdicts = [v for _, v, _ in findings(_summary(85, 70, 80, 150, 12, heads))]
    assert verdicts == ["yes", "yes", "yes", "yes", "within noise", "no"]
    verdicts = [v for _, v, _ in findings(_summary(75, 70, 80, 10, 2, heads))]
    assert verdicts[:3] == ["no", "no", "no"]


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_a_small_demo_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-per-class", "6", "--test-per-class", "4", "--timesteps", "50,300",
                 "--blocks", "4,9,10,12,15", "--seeds", "0,1", "--epochs", "1", "--samples", "4", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["rows"]) == 2 * 5 and [len(h["test_top1"]) for h in summary["heads"]] == [2, 2, 2, 2]
    assert summary["settings"]["t"] in (50, 300) and summary["settings"]["b"] in (4, 9, 10, 12, 15)
    report = (out / "report.md").read_text()
    for needed in ("## Findings", "sweep_trained.png", "samples.png", "random-init copy", "raw pixels", "DifFeed"):
        assert needed in report
    for png in ("sweep_trained.png", "sweep_trained_test.png", "samples.png"):
        assert (out / png).stat().st_size > 1000
