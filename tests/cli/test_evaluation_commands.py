"""difrep extract / probe / knn / cka / sweep end to end on a fake Fashion-MNIST."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from fakes import make_fashion_mnist, write_idx
from PIL import Image

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


def test_sweep_writes_table_heatmaps_and_a_held_out_choice(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *MODEL, *_data_args(data), "--timesteps", "10,300", "--blocks", "3,6",
                 "--pool", "1", "--val-fraction", "0.2", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert {(r["t"], r["b"]) for r in rows} == {("10", "3"), ("10", "6"), ("300", "3"), ("300", "6")}
    choice = json.loads((out / "choice.json").read_text())
    best = max(rows, key=lambda r: float(r["probe_val_top1"]))
    assert choice["held_out_top1"] == pytest.approx(float(best["probe_val_top1"]), abs=1e-3)
    assert choice["solver"] == "sgd" and choice["final"]["l2"] is None, "the paper's probe by default"
    assert choice["held_out_images"] == 10 and choice["fit_images"] == 50 and choice["test_images"] == 60
    assert choice["forward_passes"] == (60 + 60) * 2, "every image of both splits once per timestep"
    for name in ("heatmap_probe_val.png", "heatmap_probe_test.png", "heatmap_knn_test.png", "pictures.png"):
        assert (out / name).stat().st_size > 1000


def _check_choice_against_csv(out):
    """choice.json names the held-out best of sweep.csv's largest subset, with that line's scores."""
    choice = json.loads((out / "choice.json").read_text())
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert choice["settings_scored"] == len(rows)
    held_out = "held_out_top1" if "held_out_top1" in rows[0] else "probe_val_top1"
    scored = [(r["t"], r["b"], r["pool"], r["fit_images"]) for r in rows]
    assert len(set(scored)) == len(scored), "no setting scored twice at the same subset size"
    largest = max(int(r["fit_images"]) for r in rows)
    assert largest == choice["fit_images"]
    final = [r for r in rows if int(r["fit_images"]) == largest]
    chosen = [r for r in final if (int(r["t"]), int(r["b"]), int(r["pool"])) ==
              (choice["timestep"], choice["block"], choice["pool"])]
    assert len(chosen) == 1
    assert float(chosen[0][held_out]) == pytest.approx(choice["held_out_top1"], abs=1e-3)
    assert choice["held_out_top1"] == pytest.approx(max(float(r[held_out]) for r in final), abs=1e-3)
    if "probe_test_top1" in rows[0]:
        assert float(chosen[0]["probe_test_top1"]) == pytest.approx(choice["test_top1"], abs=1e-3)
    assert 0 <= choice["test_top1"] <= 100 and choice["seconds"] > 0
    return choice, rows


def test_sweep_search_auto_and_grid_write_choices_consistent_with_their_tables(data, tmp_path, capsys):
    args = ["sweep", *MODEL, *_data_args(data), "--timesteps", "10,100,300", "--blocks", "1,2,3,4,5,6",
            "--pool", "1,2", "--solver", "lbfgs", "--val-fraction", "0.2"]
    assert main([*args, "--out", str(tmp_path / "grid")]) == 0
    grid, _ = _check_choice_against_csv(tmp_path / "grid")
    assert grid["search"] == "grid" and grid["settings_scored"] == grid["grid_settings"] == 36
    assert main([*args, "--search", "auto", "--first-per-class", "1", "--out", str(tmp_path / "auto")]) == 0
    auto, auto_rows = _check_choice_against_csv(tmp_path / "auto")
    assert auto["search"] == "auto" and auto["grid_settings"] == 36
    assert len({(r["t"], r["b"], r["pool"]) for r in auto_rows}) < 36, "settings dropped at the first rung"
    assert min(int(r["fit_images"]) for r in auto_rows) == 10, "one image a class first"
    assert auto["forward_passes"] < grid["forward_passes"]
    assert auto["fit_images"] == grid["fit_images"] and auto["test_images"] == grid["test_images"]
    for name in ("surface_held_out.png", "pictures.png"):
        assert (tmp_path / "auto" / name).stat().st_size > 1000


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


def test_sweep_search_auto_reads_a_folder_of_grey_pngs_as_the_same_images_in_idx_files(tmp_path):
    """ROOT/{train,test}/<class>/*.png with the grey shipped model: the same search, to the digit, as on the
    IDX files of the same images (stored by class, so that image i is the i-th file and draws the same noise)."""
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(10).repeat_interleave(6)
    images = (torch.randint(0, 60, (60, 28, 28), generator=gen) + (labels * 19)[:, None, None]).to(torch.uint8)
    idx, folder = tmp_path / "idx", tmp_path / "folder"
    idx.mkdir()
    for prefix, split in (("train", "train"), ("t10k", "test")):
        write_idx(idx / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(idx / f"{prefix}-labels-idx1-ubyte", labels, compress=False)
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            (folder / split / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.numpy(), mode="L").save(folder / split / str(label) / f"{i:05d}.png")
    args = ["sweep", "--model", "adm-fmnist-28", "--pretrained", "--no-check", "--workers", "0", "--timesteps",
            "10,50,200", "--blocks", "2,5,8,10,13,16", "--pool", "1", "--solver", "lbfgs", "--val-fraction", "0.2",
            "--search", "auto", "--first-per-class", "1"]
    assert main([*args, "--data", "folder", "--root", str(folder), "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--data", "fashion-mnist", "--root", str(idx), "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / name / "choice.json").read_text()) for name in "ab")
    fields = ("timestep", "block", "pool", "held_out_top1", "test_top1", "settings_scored", "forward_passes",
              "fit_images", "held_out_images", "test_images")
    assert {f: a[f] for f in fields} == {f: b[f] for f in fields}
    assert a["data"] == "folder" and a["test_images"] == 60 and a["held_out_top1"] > 20, "grey images, learnable"
    assert (tmp_path / "a" / "sweep.csv").read_text().count("\n") == a["settings_scored"] + 1
