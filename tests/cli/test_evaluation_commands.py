"""difrep extract / probe / knn / cka / sweep end to end on a fake Fashion-MNIST."""

from __future__ import annotations

import csv
import json

import pytest
from fakes import make_fashion_mnist

from difrep.cli.main import main
from difrep.features.cache import FeatureCache

MODEL = ["--model", "adm", "--image_size", "32", "--num_channels", "32", "--channel_mult", "1,2",
         "--num_res_blocks", "1", "--attention_resolutions", "16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    make_fashion_mnist(root, n=60, prefixes=("train", "t10k"))
    return root


def _data_args(root):
    return ["--data", "fashion-mnist", "--root", str(root), "--no-check", "--workers", "0"]


def test_extract_probe_knn_cka(data, tmp_path, capsys):
    out = tmp_path / "train"
    args = ["extract", *MODEL, *_data_args(data), "--timesteps", "10,200", "--blocks", "2,4,6",
            "--pool", "1,2", "--shard-size", "16"]
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(tmp_path / "test"), "--split", "test"]) == 0
    cache = FeatureCache(out)
    assert len(cache.keys) == 12 and cache.num_shards == 4 and len(cache.labels) == 60
    manifest = cache.manifest
    assert manifest["model"]["config"]["num_channels"] == 32 and len(manifest["model"]["weights_sha256"]) == 64
    assert manifest["data"]["split"] == "train" and "Normalize" in manifest["data"]["transform"]
    capsys.readouterr()

    probe = ["probe", "--train", str(out), "--test", str(tmp_path / "test"), "--key", "t10_b6_p2"]
    assert main([*probe, "--batch-size", "8", "--lr", "0.05", "--out", str(tmp_path / "p.json")]) == 0
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["solver"] == "sgd" and result["details"]["standardize"] is False, "the paper's protocol by default"
    assert result["top1"] > 30, "labels shift the mean brightness: a linear probe must beat chance (10%)"
    assert main([*probe, "--solver", "lbfgs", "--out", str(tmp_path / "l.json")]) == 0
    assert json.loads((tmp_path / "l.json").read_text())["top1"] > 30
    assert main(["knn", "--train", str(out), "--test", str(tmp_path / "test"), "--key", "t10_b2_p1",
                 "--k", "5,20"]) == 0
    assert '"k5"' in capsys.readouterr().out

    assert main(["cka", "--cache", str(out), "--t", "10", "--out", str(tmp_path / "cka")]) == 0
    rows = list(csv.reader((tmp_path / "cka.csv").read_text().splitlines()))
    assert rows[0][1:] == ["t10_b2_p1", "t10_b2_p2", "t10_b4_p1", "t10_b4_p2", "t10_b6_p1", "t10_b6_p2"]
    assert all(abs(float(rows[i][i]) - 1) < 1e-4 for i in range(1, 7)), "CKA of a feature with itself is 1"
    assert (tmp_path / "cka.png").stat().st_size > 1000


def test_extract_refuses_a_cache_of_other_settings(data, tmp_path, capsys):
    base = ["extract", *MODEL, *_data_args(data), "--blocks", "2", "--out", str(tmp_path / "c")]
    assert main([*base, "--timesteps", "10"]) == 0
    assert main([*base, "--timesteps", "20"]) == 2
    assert "holds a cache made with other settings" in capsys.readouterr().err


def test_sweep_writes_table_heatmaps_and_a_held_out_recommendation(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *MODEL, *_data_args(data), "--timesteps", "10,300", "--blocks", "3,6",
                 "--pool", "1", "--val-fraction", "0.2", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert {(r["t"], r["b"]) for r in rows} == {("10", "3"), ("10", "6"), ("300", "3"), ("300", "6")}
    summary = json.loads((out / "summary.json").read_text())
    best = max(rows, key=lambda r: float(r["probe_val_top1"]))
    assert float(summary["recommended"]["probe_val_top1"]) == pytest.approx(float(best["probe_val_top1"]), abs=1e-3)
    assert summary["chosen_on"] == "held-out part of the training split"
    assert summary["solver"] == "sgd" and summary["recommended"]["l2"] is None, "the paper's probe by default"
    for name in ("heatmap_probe_val.png", "heatmap_probe_test.png", "heatmap_knn_test.png"):
        assert (out / name).stat().st_size > 1000


def test_unknown_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["probe", "--train", "a", "--test", "b", "--key", "t1_b1_p1", "--bogus", "1"])
    assert "unrecognized arguments: --bogus 1" in capsys.readouterr().err


def test_torchrun_two_processes_write_the_same_cache_as_one(data, tmp_path):
    import subprocess
    import sys

    import torch

    args = [*MODEL, *_data_args(data), "--timesteps", "10,200", "--blocks", "2,4", "--shard-size", "8"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["extract", *args, "--out", str(one)]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "difrep.cli.main", "extract", *args, "--out", str(two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = FeatureCache(one), FeatureCache(two)
    assert torch.equal(a.indices, b.indices)
    for key in a.keys:
        assert torch.equal(a.features(key).to_tensor(), b.features(key).to_tensor())
