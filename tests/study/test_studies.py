"""The shipped study files end to end at toy size: the Fashion-MNIST study (every stage kind) and the demo, whose
alias and study file give one report."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from difrep.cli.main import main
from difrep.data import DEBIAN_FASHION_MNIST

STUDIES = Path(__file__).resolve().parents[2] / "configs" / "studies"
pytestmark = pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
SMALL = {"dim": 16, "depth": 1, "num_heads": 2, "max_tokens": 4}
T, B, FEED = "${sweep.t}", "${sweep.b}", "${sweep.difeed_block}"


def _weights(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = __import__("difrep").create_model("adm-fmnist-28")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _tiny_fashion_study(tmp_path: Path) -> Path:
    """configs/studies/fashion_mnist.yaml as its base, cut to 8 training images a class and tiny heads."""
    short = {"epochs": 1, "batch_size": 8}
    study = {
        "base": str(STUDIES / "fashion_mnist.yaml"), "out": str(tmp_path / "study"), "seeds": [0, 1],
        "data": {"train_per_class": 8, "test_per_class": 3, "val_fraction": 0.25},
        "model": {"checkpoint": str(_weights(tmp_path))}, "run": {"workers": 0, "shard_size": 16},
        "stages": {
            "samples": {"num": 4, "steps": 2, "colour_num": 4, "ddpm_num": 2, "ddpm_steps": 3, "classifier_epochs": 1},
            "sweep": {"timesteps": [25, 100], "blocks": [4, 10, 13], "pools": [1, 2],
                      "probe": {"epochs": 2, "step_epochs": 1}},
            "knn": {"ks": [3, 5]}, "random": {"probe": {"epochs": 2, "step_epochs": 1}},
            "pixels": {"probe": {"epochs": 2, "step_epochs": 1}, "ks": [3, 5]}, "cka": {"images": 20},
            "heads": {"base": {"optim": short}, "runs": [
                {"id": "attention", "name": "Attention", "config": {"features": {"timesteps": [T], "blocks": [B], "pool": 4},
                                                                    "head": {**SMALL, "name": "attention"}}},
                {"id": "mlp", "name": "MLP", "config": {"features": {"timesteps": [T], "blocks": [B], "pool": 4},
                                                        "head": {"name": "mlp", "hidden": [16], "pool": 2}}},
                {"id": "diffeed-bottleneck", "name": "DifFeed (bottleneck)", "cached": False,
                 "config": {"data": {"per_class": 2}, "features": {"timesteps": [T], "blocks": [FEED]},
                            "head": {**SMALL, "name": "difeed", "strategy": "bottleneck"}}},
                {"id": "attention-as-diffeed", "name": "Attention (2/class, as DifFeed)", "cached": False,
                 "config": {"data": {"per_class": 2}, "features": {"timesteps": [T], "blocks": [FEED]},
                            "head": {**SMALL, "name": "attention"}}}]},
            "semi": {"base": {"optim": {"epochs": 1, "batch_size": 4}}, "runs": [
                {"id": "linear-10", "name": "Linear, 10%", "percent": 10,
                 "config": {"features": {"timesteps": [T], "blocks": [B]}, "head": {"name": "linear", "pool": 2}}}]},
        },
        "findings": [
            {"kind": "middle_timestep", "claim": "A middle noise step is best (Figure 3)", "sweep": "sweep"},
            {"kind": "knn_follows", "claim": "kNN follows the linear probe's trends (Table 9)", "knn": "knn", "sweep": "sweep"},
            {"kind": "compare", "claim": "Feedback beats Attention on the same images", "a": "heads/diffeed-bottleneck",
             "b": "heads/attention-as-diffeed"},
            {"kind": "cka_differs", "claim": "Features differ (Figure 5)", "cka": "cka"}],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _result(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "result.json").read_text())["result"]


def test_the_fashion_mnist_study_runs_every_stage_and_resumes_from_its_results_alone(tmp_path, monkeypatch):
    path = _tiny_fashion_study(tmp_path)
    assert main(["study", str(path)]) == 0
    out = tmp_path / "study"
    r = {s: _result(out, s) for s in ("samples", "sweep", "knn", "random", "pixels", "cka", "heads", "semi")}
    assert r["samples"]["channels"] == 1 and r["samples"]["channel_disagreement"] == 0.0
    assert sum(r["samples"]["recognition"]["ddpm_samples"]["class_counts"]) == 2
    assert {(x["t"], x["b"]) for x in r["sweep"]["rows"]} == {(t, b) for t in (25, 100) for b in (4, 10, 13)}
    best = r["sweep"]["best"]
    assert sorted({x["pool"] for x in r["sweep"]["pool_rows"]}) == [1, 2] and {x["t"] for x in r["sweep"]["pool_rows"]} == {best["t"]}
    assert r["knn"]["t"] == best["t"] and r["cka"]["t"] == best["t"] and r["cka"]["b"] == best["b"]
    assert {x["t"] for x in r["random"]["rows"]} == {25, best["t"]} and {x["b"] for x in r["random"]["rows"]} == {4, 10, 13}
    assert r["pixels"]["dim"] == 784
    blocks = torch.tensor(r["cka"]["across_blocks"])
    assert torch.allclose(blocks.diagonal(), torch.ones(3), atol=1e-6) and torch.allclose(blocks, blocks.T, atol=1e-9)
    heads = {h["id"]: h for h in r["heads"]["runs"]}
    assert [x["seed"] for x in heads["attention"]["runs"]] == [0, 1]
    metrics = json.loads((out / "heads" / "attention-seed1" / "metrics.json").read_text())
    assert heads["attention"]["values"][1] == pytest.approx(metrics["top1"])
    attention = yaml.safe_load((out / "heads" / "attention.yaml").read_text())
    assert attention["features"]["timesteps"] == [best["t"]] and attention["data"]["test_per_class"] == 3
    semi = json.loads((out / "semi" / "linear-10-seed0" / "metrics.json").read_text())["config"]
    assert semi["data"]["per_class"] == 1 and semi["run"]["finetune"] is True, "10% of the study's 80 labels"
    assert len(r["semi"]["runs"][0]["values"]) == 2, "every seed, like every stage that trains"
    report = (out / "report.md").read_text()
    feed = report.split("## Heads on the frozen U-Net")[1].split("\n## ")[0]
    assert "| Feedback beats Attention on the same images |" in feed, "each section repeats the findings it tests"
    fastest = min(x["seconds"] for x in heads["diffeed-bottleneck"]["runs"])
    row = next(line for line in report.splitlines() if line.startswith("| DifFeed (bottleneck) |"))
    assert row.removesuffix(" |").split(" | ")[-1] == f"{fastest:.0f}", "a run's time is its fastest seed's"

    def refuse(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("difrep.study.stages.train.train", refuse)
    (out / "heads" / "result.json").unlink()  # a stage cut short: its finished runs are read back, not retrained
    for weights in out.rglob("*.pt"):  # and what a committed study folder lacks: weights and caches
        weights.unlink()
    shutil.rmtree(out / "cache")
    assert main(["study", str(path), "--stages", "samples"]) == 0
    cut = (out / "report.md").read_text().split("## Heads on the frozen U-Net")[1].split("\n## ")[0]
    assert "**Not finished**" in cut and f"| {heads['attention']['values'][0]:.1f}, " in cut, "a stage cut short shows its runs"
    assert main(["study", str(path), "--stages", "heads"]) == 0
    again = _result(out, "heads")
    assert [(h["values"], h["parameters"]) for h in again["runs"]] == [(h["values"], h["parameters"]) for h in r["heads"]["runs"]]
    assert not (out / "cache").exists(), "finished runs need no features"
    assert "## Linear CKA" in (out / "report.md").read_text(), "the report keeps the stages this call did not run"


def test_the_demo_alias_and_its_study_file_give_one_report(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    flags = ["--train-per-class", "6", "--test-per-class", "4", "--timesteps", "50,300", "--blocks", "4,9,10,12,15",
             "--seeds", "0,1", "--epochs", "1", "--samples", "4"]
    assert main(["demo", "--out", str(out), *flags, "--no-progress"]) == 0
    heads = _result(out, "heads")
    assert [len(h["values"]) for h in heads["runs"]] == [1, 2, 2, 2], "L-BFGS is deterministic: one value"
    sweep = _result(out, "sweep")
    assert sweep["search"] == "auto" and sweep["choice"]["grid_settings"] == 2 * 5
    random = _result(out, "random")
    assert random["blocks"] == [4, 9, 10, 12, 15] and len(random["rows"]) == len(random["timesteps"]) * 5, "the control sweeps its grid whole"
    report = (out / "report.md").read_text()
    for needed in ("## Findings", "sweep/surface_val.png", "sweep/pictures.png", "samples/samples_ddim50.png",
                   "random-init copy", "raw pixels", "| The Attention head beats a converged linear classifier |",
                   "DifFeed", "the search saved"):
        assert needed in report, needed
    for png in ("sweep/surface_val.png", "sweep/pictures.png", "random/sweep_val.png", "samples/samples_ddim50.png",
                "heads/results.png"):
        assert (out / png).stat().st_size > 1000

    def refuse(*a, **k):
        raise AssertionError("the study file recomputed what the alias had run")

    monkeypatch.setattr("difrep.study.runner.Study._compute", refuse)
    overrides = [f"out={out}", "data.train_per_class=6", "data.test_per_class=4", "vars.timesteps=[50,300]",
                 "stages.sweep.blocks=[4,9,10,12,15]", "seeds=[0,1]", "vars.epochs=1", "stages.samples.num=4",
                 "run.progress=false"]
    assert main(["study", str(STUDIES / "demo.yaml"), *overrides]) == 0
    assert (out / "report.md").read_text() == report


def test_the_dit_study_file_runs_on_a_new_dit_folder(tmp_path):
    """configs/studies/dit_fashion_mnist.yaml on the folder difrep new-dit writes, cut to toy size."""
    folder = tmp_path / "dit"
    assert main(["new-dit", str(folder), "--size", "S", "--depth", "3", "--width", "32", "--heads", "2",
                 "--sample-size", "28", "--in-channels", "1", "--classes", "10"]) == 0
    study = {
        "base": str(STUDIES / "dit_fashion_mnist.yaml"), "out": str(tmp_path / "study"), "seeds": [0],
        "data": {"train_per_class": 6, "test_per_class": 3, "val_fraction": 0.25},
        "model": {"name": f"diffusers:{folder}"}, "vars": {"timesteps": [50, 300], "epochs": 1},
        "stages": {"sweep": {"blocks": [0, 2, 4]},
                   "random": {"kind": "sweep", "model": "random", "timesteps": [T], "blocks": [2, 4], "pool": 2,
                              "probe": {"solver": "lbfgs"}},
                   "heads": {"base": {"data": {"per_class": 4}, "optim": {"batch_size": 8}, "head": SMALL}}},
    }
    path = tmp_path / "dit.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["study", str(path)]) == 0
    sweep = _result(tmp_path / "study", "sweep")
    assert sweep["best"]["b"] in (0, 2, 4) and sweep["middle_block"] == 2 and sweep["num_blocks"] == 4
    random = _result(tmp_path / "study", "random")
    assert random["model"] == "random" and {r["b"] for r in random["rows"]} == {2, 4}, "a random-init copy of the DiT"
    heads = _result(tmp_path / "study", "heads")
    assert [r["id"] for r in heads["runs"]] == ["linear", "attention", "difformer"]
    report = (tmp_path / "study" / "report.md").read_text()
    assert f"diffusers:{folder}" in report and "raw pixels" in report and "random-init copy" in report
