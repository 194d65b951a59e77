"""The full-scale study: verdicts that follow the numbers, and a tiny study that runs every stage and resumes."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file

from difrep.cli.main import main
from difrep.data import DEBIAN_FASHION_MNIST
from difrep.evaluation.knn import knn_accuracy
from difrep.features.cache import FeatureCache, FeatureKey
from difrep.models import create_model
from difrep.study import findings


def _row(t: int, b: int, pool: int, test: float) -> dict:
    return {"t": t, "b": b, "pool": pool, "probe_val_top1": test, "probe_test_top1": test, "probe_test_top5": 99.0,
            "knn20_val_top1": 0.0, "knn20_test_top1": 0.0, "dim": 1, "l2": None}


def _head(name: str, values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    return {"name": name, "setting": "", "runs": [], "parameters": 0,
            "top1": {"values": values, "mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0}}


def test_verdicts_follow_the_numbers():
    rows = [_row(t, b, 2, 80 - 2 * abs(b - 10) - abs(t - 50) / 50) for t in (5, 50, 500) for b in range(1, 20)]
    pools = [_row(50, 10, p, 80 - 0.5 * p) for p in (1, 4)]
    best = _row(50, 10, 2, 80)
    results = {
        "sweep": {"best": best, "rows": rows, "pool_rows": pools},
        "controls": {"random_best": _row(5, 3, 2, 70), "pixels": {"probe_test_top1": 79.0}},
        "knn": {"rows": [{"b": b, "k20_top1": 70 - abs(b - 12)} for b in range(1, 20)]},
        "heads": {"linear": best, "linear_same_pool": pools[1], "heads": [
            _head("Attention", [82, 83, 84]), _head("DifFormer", [83, 84, 85]), _head("MLP", [85, 86, 87]),
            _head("DifFeed (bottleneck)", [70, 71, 72]), _head("DifFeed (all)", [60, 61, 62]),
            _head("Attention (300/class, as DifFeed)", [65, 66, 67])]},
        "cka": {"blocks": [1, 19], "timesteps": [5, 500], "across_blocks": [[1, 0.3], [0.3, 1]],
                "across_timesteps": [[1, 0.9], [0.9, 1]]},
    }
    tested = findings(results, 19, 10)
    verdicts = {f.claim.split(" (")[0]: f.verdict for f in tested}
    stages = {f.claim.split(" (")[0]: f.stage for f in tested}
    assert stages["kNN follows the linear probe's trends"] == "knn" and stages["Fusion"] == "heads"
    assert stages["Trained diffusion features beat a random-init copy and raw pixels"] == "controls"
    assert verdicts["Trained diffusion features beat a random-init copy and raw pixels"] == "yes"
    assert verdicts["A middle noise step is best"] == "yes"
    assert verdicts["Middle blocks, near the bottleneck, are best"] == "yes"
    assert verdicts["Least sensitive to pooling, most to the block"] == "yes"  # ranges: pool 1.5, t 9, block 18
    assert verdicts["kNN follows the linear probe's trends"] == "yes"
    assert verdicts["The Attention head beats the linear probe"] == "yes"  # 83 vs 80, spread 1
    same = next(f for f in tested if "same 4x4 pooling" in f.claim)
    assert same.verdict == "yes" and "vs linear probe, pool 4 78.0%" in same.evidence  # 83 vs 78
    results["heads"]["linear_same_pool"] = _row(50, 10, 4, 90)
    same = next(f for f in findings(results, 19, 10) if "same 4x4 pooling" in f.claim)
    assert same.verdict == "no" and "gap -7.0" in same.evidence
    assert verdicts["Fusion"] == "within noise"  # 84 vs 83, spread 1
    assert verdicts["Feedback"] == "yes"
    assert verdicts["The bottleneck feedback strategy is best"] == "yes"
    strategies = next(f for f in tested if f.claim.startswith("The bottleneck feedback strategy"))
    assert strategies.evidence.endswith("(gap of the best to the next +10.0, larger std over seeds 1.0)")
    assert verdicts["The Attention head beats the MLP head"] == "no"
    assert verdicts["Features differ greatly across blocks and timesteps"] == "yes"
    results["semi"] = {"fractions": [{"percent": 1, "heads": [_head("Linear, 1%", [40.0]), _head("DifFormer, 1%", [45.0]),
                                                             _head("DifFeed (bottleneck), 1%", [39.0])]}]}
    verdicts = {f.claim.split(" beats GD")[0]: f.verdict for f in findings(results, 19, 10) if f.stage == "semi"}
    assert verdicts == {"DifFormer": "yes (one seed)", "DifFeed (bottleneck)": "no (one seed)"}
    results["sweep"]["best"] = _row(500, 2, 2, 60)
    verdicts = {f.claim.split(" (")[0]: f.verdict for f in findings(results, 19, 10)}
    assert verdicts["A middle noise step is best"] == verdicts["Middle blocks, near the bottleneck, are best"] == "no"
    assert verdicts["Trained diffusion features beat a random-init copy and raw pixels"] == "no"


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_a_tiny_study_runs_every_stage_and_resumes_without_recomputing(tmp_path, monkeypatch, capsys):
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = create_model("adm-fmnist-28")
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "study"
    args = ["study", f"model.checkpoint={weights}", "data.train_per_class=8", "data.test_per_class=3",
            "data.val_fraction=0.25", "sweep.timesteps=[25,100]", "sweep.blocks=[4,10,13]", "sweep.pools=[1,2]",
            "sweep.knn_ks=[3,5]", "sweep.probe.epochs=2", "sweep.probe.step_epochs=1", "heads.names=[attention,difeed,mlp]",
            "heads.seeds=[0,1]", "heads.epochs=1", "heads.difeed_epochs=1", "heads.difeed_per_class=2",
            "heads.strategies=[bottleneck]", "heads.batch_size=8", "heads.dim=16", "heads.num_heads=2", "heads.depth=1", "semi.percents=[10]",
            "semi.heads=[linear]", "semi.epochs=1", "semi.batch_size=4", "cka.images=20", "samples.num=4", "samples.steps=2",
            "samples.colour_num=4", "samples.ddpm_num=2", "samples.ddpm_steps=3", "samples.classifier_epochs=1", f"run.out={out}", "run.progress=false",
            "run.workers=0", "run.shard_size=16"]
    assert main(args) == 0
    result = {s: json.loads((out / s / "result.json").read_text())
              for s in ("samples", "sweep", "knn", "controls", "heads", "semi", "cka")}
    assert result["samples"]["channels"] == 1 and result["samples"]["channel_disagreement"] == 0.0
    assert sum(result["samples"]["recognition"]["samples"]["class_counts"]) == 4
    assert sum(result["samples"]["recognition"]["ddpm_samples"]["class_counts"]) == 2
    assert (out / "samples" / "samples_ddpm3.png").is_file()
    sweep = result["sweep"]
    assert len(sweep["rows"]) == 2 * 3 and {(r["t"], r["b"]) for r in sweep["rows"]} == {(t, b) for t in (25, 100) for b in (4, 10, 13)}
    best = max(sweep["rows"], key=lambda r: (round(r["probe_val_top1"], 6), round(r["knn20_val_top1"], 6), -r["dim"]))
    assert (sweep["best"]["t"], sweep["best"]["b"]) == (best["t"], best["b"]), "chosen on held-out accuracy"
    assert sorted({r["pool"] for r in sweep["pool_rows"]}) == [1, 2] and {r["t"] for r in sweep["pool_rows"]} == {best["t"]}
    train, test = FeatureCache(out / "cache" / "trained-pools-train"), FeatureCache(out / "cache" / "trained-pools-test")
    assert len(train.labels) == 80 and len(test.labels) == 30
    key = FeatureKey(best["t"], 10, 1)
    direct = knn_accuracy(train.features(key).to_tensor(), train.labels, test.features(key).to_tensor(), test.labels, 10,
                          ks=(3, 5))
    row = next(r for r in result["knn"]["rows"] if r["b"] == 10)
    assert row["k3_top1"] == pytest.approx(direct[3][1]) and row["k5_top5"] == pytest.approx(direct[5][5])
    assert result["controls"]["pixels"]["dim"] == 784 and len(result["controls"]["random_rows"]) == 3 * len({25, best["t"]})
    heads = {h["name"]: h for h in result["heads"]["heads"]}
    assert set(heads) == {"Attention", "MLP", "DifFeed (bottleneck)", "Attention (2/class, as DifFeed)"}
    for h in heads.values():
        assert [r["seed"] for r in h["runs"]] == [0, 1]
    metrics = json.loads((out / "heads" / "attention-seed1" / "metrics.json").read_text())
    assert heads["Attention"]["top1"]["values"][1] == pytest.approx(metrics["top1"])
    semi = result["semi"]["fractions"][0]
    assert semi["per_class"] == 1 and json.loads((out / "semi" / "pct10" / "linear-10-seed0" / "metrics.json").read_text()
                                                  )["config"]["run"]["finetune"] is True
    blocks = torch.tensor(result["cka"]["across_blocks"])
    assert torch.allclose(blocks.diagonal(), torch.ones(3), atol=1e-6) and torch.allclose(blocks, blocks.T, atol=1e-9)
    report = (out / "report.md").read_text()
    assert "| A middle noise step is best (Figure 3) |" in report and "DifFeed (bottleneck)" in report
    difeed_row = next(line for line in report.splitlines() if line.startswith("| DifFeed (bottleneck) |"))
    fastest = min(r["seconds"] for r in heads["DifFeed (bottleneck)"]["runs"])  # about a second each
    assert difeed_row.removesuffix(" |").split(" | ")[-1] == f"{fastest:.0f}", "a run's time is its fastest seed's"
    semi_row = next(line for line in report.splitlines() if line.startswith("| Linear, 10% |")).split(" | ")
    assert semi_row[2] == f"{semi['heads'][0]['top1']['mean']:.1f} (one seed)", "no spread is claimed from one seed"
    sweep_section = report.split("## Linear probe over t, b and pool")[1].split("\n## ")[0]
    assert "| A middle noise step is best (Figure 3) |" in sweep_section, "each table repeats the findings it tests"
    assert "Table 9" not in sweep_section and "| kNN follows" in report.split("## kNN")[1].split("\n## ")[0]

    def refuse(*a, **k):
        raise AssertionError("a finished study recomputed something")

    monkeypatch.setattr("difrep.study.pipeline.train", refuse)
    monkeypatch.setattr("difrep.study.pipeline.sweep_row", refuse)
    monkeypatch.setattr("difrep.study.pipeline.sample", refuse)
    (out / "heads" / "result.json").unlink()  # a stage cut short: its finished runs are read back, not retrained
    for weights_file in out.rglob("*.pt"):  # and what a committed study folder lacks: weights and caches
        weights_file.unlink()
    shutil.rmtree(out / "cache")
    assert main([*args, "run.stages=[heads]"]) == 0
    again = json.loads((out / "heads" / "result.json").read_text())
    assert [(h["top1"], h["parameters"]) for h in again["heads"]] == [(h["top1"], h["parameters"]) for h in result["heads"]["heads"]]
    assert heads["Attention"]["parameters"] > 0 and again["linear_same_pool"] is None  # no 4x4 probe in this sweep
    untimed = report.split("## Time")[0]
    assert (out / "report.md").read_text().split("## Time")[0] == untimed, "the report keeps earlier calls' stages"
    assert main([*args, "sweep.probe.epochs=3"]) == 2
    assert "another config (changed: sweep.probe)" in capsys.readouterr().err
    save_file({k: v.contiguous() + 1 for k, v in model.state_dict().items()}, str(weights))  # retrained, same path
    assert main(args) == 2
    assert "another config (changed: model.weights_sha256)" in capsys.readouterr().err


def test_run_folders_are_named_by_the_runs_names_one_dash_between_words():
    from difrep.study.pipeline import _slug

    assert _slug("DifFeed (bottleneck), 1%") == "diffeed-bottleneck-1"
    assert _slug("Attention (300/class, as DifFeed)") == "attention-300-class-as-diffeed"
