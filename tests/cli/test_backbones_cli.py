"""Every backbone family through the commands: info, sweep (cache, probe, kNN), knn, cka --vs, train, evaluate."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from fakes import make_fashion_mnist

from difrep.cli.main import main
from difrep.errors import UserError
from difrep.features.cache import FeatureCache
from difrep.training import evaluate_checkpoint, load_config, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    make_fashion_mnist(root, n=40, prefixes=("train", "t10k"))
    return root


def _models(backbone_folders):
    return {
        "timm": (["--model", "timm:resnet50", "--image_size", "32"], "2,4", None),
        "diffusers": (["--model", f"diffusers:{backbone_folders / 'ddpm'}"], "19,24", "10,200"),
        "sd": (["--model", f"sd:{backbone_folders / 'sd'}"], "paper:15,dift:1", "10,200"),
        "dit": (["--model", f"diffusers:{backbone_folders / 'dit'}"], "2,final", "10,200"),
    }


def test_info_prints_each_backbones_block_table(backbone_folders, capsys):
    for family, (model, _, _) in _models(backbone_folders).items():
        assert main(["info", model[1], *model[2:]]) == 0
        out = capsys.readouterr().out
        rows = [line for line in out.splitlines() if line.strip()[:2].strip().isdigit()]
        assert len(rows) == {"timm": 4, "diffusers": 37, "sd": 25, "dit": 5}[family], out
        assert ("no noise step" in out) == (family == "timm")
        if family == "sd":
            assert "dift:1 = 19" in out and "paper:18 = 16" in out
    assert "embed = 0" in out and "final = 4" in out and "DiT" in out


def test_sweep_knn_and_cka_across_backbones(data, backbone_folders, tmp_path, capsys):
    base = ["--data", "fashion-mnist", "--root", str(data), "--no-check", "--workers", "0", "--pool", "1",
            "--val-fraction", "0.25", "--solver", "lbfgs"]
    for family, (model, blocks, timesteps) in _models(backbone_folders).items():
        steps = ["--timesteps", timesteps] if timesteps else []
        assert main(["sweep", *model, *base, *steps, "--blocks", blocks, "--out", str(tmp_path / family)]) == 0
        rows = list(csv.DictReader((tmp_path / family / "sweep.csv").read_text().splitlines()))
        expected_t = {"0"} if timesteps is None else {"10", "200"}
        assert {r["t"] for r in rows} == expected_t
        assert all(0 <= float(r["probe_test_top1"]) <= 100 for r in rows)
        auto = tmp_path / f"{family}-auto"
        assert main(["sweep", *model, *base, *steps, "--blocks", blocks, "--search", "auto", "--first-per-class", "1",
                     "--out", str(auto)]) == 0
        choice = json.loads((auto / "choice.json").read_text())
        scored = list(csv.DictReader((auto / "sweep.csv").read_text().splitlines()))
        assert choice["settings_scored"] == len(scored) and {r["t"] for r in scored} <= expected_t
        final = [r for r in scored if int(r["fit_images"]) == choice["fit_images"]]
        assert max(float(r["held_out_top1"]) for r in final) == pytest.approx(choice["held_out_top1"], abs=1e-3)
        assert (auto / "pictures.png").stat().st_size > 1000
    capsys.readouterr()
    sd_cache = FeatureCache(tmp_path / "sd" / "cache-train")
    assert {k.b for k in sd_cache.keys} == {13, 19}, "block names are resolved to numbers in the cache"
    assert sd_cache.manifest["model"]["config"]["type"] == "StableDiffusion"
    dit_cache = FeatureCache(tmp_path / "dit" / "cache-train")
    assert {k.b for k in dit_cache.keys} == {2, 4} and dit_cache.manifest["model"]["config"]["class_label"] == 10
    dit_model = _models(backbone_folders)["dit"][0]
    assert main(["extract", *dit_model, *base[:7], "--timesteps", "50", "--blocks", "embed,3", "--pool", "2",
                 "--out", str(tmp_path / "dit-extract")]) == 0
    extracted = FeatureCache(tmp_path / "dit-extract")
    assert sorted((k.b, k.pool) for k in extracted.keys) == [(0, 2), (3, 2)]
    assert extracted.features(extracted.keys[0]).shape == (40, 16 * 2 * 2), "width 16, 2 x 2 pooled tokens"
    assert main(["cka", "--cache", str(tmp_path / "dit" / "cache-train"), "--vs", str(tmp_path / "timm" / "cache-train"),
                 "--out", str(tmp_path / "dit-cka")]) == 0
    assert len(list(csv.reader((tmp_path / "dit-cka.csv").read_text().splitlines()))) == 1 + 4
    timm_root = tmp_path / "timm" / "cache-train"
    assert main(["knn", "--train", str(timm_root), "--test", str(tmp_path / "timm" / "cache-test"),
                 "--key", "t0_b4_p1", "--k", "5"]) == 0
    assert '"k5"' in capsys.readouterr().out

    assert main(["cka", "--cache", str(tmp_path / "sd" / "cache-train"), "--vs", str(timm_root),
                 "--out", str(tmp_path / "cka")]) == 0
    table = list(csv.reader((tmp_path / "cka.csv").read_text().splitlines()))
    assert table[0][1:] == ["t0_b2_p1", "t0_b4_p1"] and len(table) == 1 + 4
    values = [float(v) for row in table[1:] for v in row[1:]]
    assert all(0 <= v <= 1 + 1e-6 for v in values) and len(set(values)) > 1


def _train_overrides(data, out, model: str, flags: dict, **extra):
    """A tiny `difrep train` on the fake Fashion-MNIST: 2 epochs of a small Attention head unless ``extra`` says."""
    overrides = {
        "model.name": model, "model.flags": json.dumps(flags),
        "data.name": "fashion-mnist", "data.root": str(data), "data.check": "false", "data.workers": 0,
        "features.timesteps": "[100]", "features.blocks": "[16]", "head.name": "attention", "head.dim": 16,
        "head.depth": 1, "head.num_heads": 2, "optim.batch_size": 20, "optim.epochs": 2, "optim.eval_every": 2,
        "optim.name": "adam", "optim.lr": 0.01, "run.out": str(out), "run.progress": "false",
        "run.tensorboard": "false", **extra,
    }
    return [f"{k}={v}" for k, v in overrides.items()]


def _sd_overrides(data, backbone_folders, out, **extra):
    return _train_overrides(data, out, f"sd:{backbone_folders / 'sd'}", {"learnable_text": True}, **extra)


def test_sd_learnable_text_trains_with_a_head_and_is_saved(data, backbone_folders, tmp_path):
    metrics = train(load_config(None, _sd_overrides(data, backbone_folders, tmp_path)))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    saved = [k for k in state["weights"] if k.startswith("model.")]
    assert saved == ["model.text_embedding"], "the frozen U-Net is not saved, the learnt text embedding is"
    from difrep import create_model

    null = create_model(f"sd:{backbone_folders / 'sd'}").text_embedding
    assert not torch.allclose(state["weights"]["model.text_embedding"], null), "the text embedding was trained"
    again = evaluate_checkpoint(tmp_path / "last.pt")
    assert again["top1"] == pytest.approx(metrics["top1"]) and again["images"] == 40


def test_sd_learnable_text_on_two_processes_equals_one_process(data, backbone_folders, tmp_path):
    """DDP with a frozen U-Net and a trainable text embedding inside it: 2 processes of batch 4 take the
    steps of 1 process of batch 8."""
    common = {"optim.epochs": 1, "optim.name": "sgd", "optim.lr": 0.05, "data.per_class": 2}  # 20 images
    train(load_config(None, _sd_overrides(data, backbone_folders, tmp_path / "one", **common, **{"optim.batch_size": 8})))
    args = _sd_overrides(data, backbone_folders, tmp_path / "two", **common, **{"optim.batch_size": 4})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "difrep.cli.main", "train", *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (torch.load(tmp_path / n / "last.pt", weights_only=True)["weights"] for n in ("one", "two"))
    from difrep import create_model

    null = create_model(f"sd:{backbone_folders / 'sd'}").text_embedding
    step = (one["model.text_embedding"] - null).norm()
    gap = (two["model.text_embedding"] - one["model.text_embedding"]).norm()
    assert step > 0 and gap < 0.02 * step, f"2 processes differ by {gap:.2e}, the text moved {step:.2e}"


def _dit_overrides(data, backbone_folders, out, **extra):
    """DifFormer over DiT blocks 1 and 2 at t = 100 and 300, the class vectors learnt."""
    fusion = {"features.timesteps": "[100,300]", "features.blocks": "[1,2]", "head.name": "difformer"}
    return _train_overrides(data, out, f"diffusers:{backbone_folders / 'dit'}", {"learnable_class": True},
                            **{**fusion, **extra})


def test_dit_difformer_over_two_blocks_trains_the_learnable_class_and_difeed_is_refused(data, backbone_folders, tmp_path):
    metrics = train(load_config(None, _dit_overrides(data, backbone_folders, tmp_path)))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    saved = sorted(k for k in state["weights"] if k.startswith("model."))
    assert saved == [f"model.transformer.transformer_blocks.{i}.norm1.emb.class_embedder.vector" for i in (0, 1)], \
        "the frozen DiT is not saved; the class vectors of the blocks that ran are"
    from difrep import create_model

    null = create_model(f"diffusers:{backbone_folders / 'dit'}", learnable_class=True).state_dict()
    assert not torch.allclose(state["weights"][saved[0]], null[saved[0].removeprefix("model.")]), "it was trained"
    again = evaluate_checkpoint(tmp_path / "last.pt")
    assert again["top1"] == pytest.approx(metrics["top1"]) and again["images"] == 40
    refused = _dit_overrides(data, backbone_folders, tmp_path / "difeed", **{"head.name": "difeed", "features.blocks": "[2]",
                                                                    "features.timesteps": "[100]"})
    with pytest.raises(UserError, match="DifFeed feeds a diffusion U-Net's decoder features .* DiT has no decoder"):
        train(load_config(None, refused))


def test_dit_learnable_class_on_two_processes_equals_one_process(data, backbone_folders, tmp_path):
    """DDP with a frozen DiT and trainable class vectors inside it: 2 processes of batch 4 take the steps of 1
    process of batch 8."""
    common = {"optim.epochs": 1, "optim.name": "sgd", "optim.lr": 0.05, "data.per_class": 2, "head.name": "attention",
              "features.timesteps": "[100]", "features.blocks": "[2]"}
    train(load_config(None, _dit_overrides(data, backbone_folders, tmp_path / "one", **common, **{"optim.batch_size": 8})))
    args = _dit_overrides(data, backbone_folders, tmp_path / "two", **common, **{"optim.batch_size": 4})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "difrep.cli.main", "train", *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (torch.load(tmp_path / n / "last.pt", weights_only=True)["weights"] for n in ("one", "two"))
    from difrep import create_model

    start = create_model(f"diffusers:{backbone_folders / 'dit'}", learnable_class=True).state_dict()
    vectors = [k for k in one if k.endswith("class_embedder.vector")]
    assert len(vectors) == 2, "blocks 1 and 2 ran: their class vectors trained"
    for key in vectors:
        step = (one[key] - start[key.removeprefix("model.")]).norm()
        gap = (two[key] - one[key]).norm()
        assert step > 0 and gap < 0.02 * step, f"{key}: 2 processes differ by {gap:.2e}, the vector moved {step:.2e}"
