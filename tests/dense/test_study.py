"""The scenes studies end to end at toy size, from their study files: selection on held-out scenes, every run and
seed, resume, and a changed setting that reruns only the stage it reaches."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fakes import make_fake_scenes

from difrep.cli.main import main

STUDIES = Path(__file__).resolve().parents[2] / "configs" / "studies"


def _stamps(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.glob("**/metrics.json"))}


def test_the_segmentation_study_selects_on_held_out_scenes_runs_every_run_and_resumes(tmp_path, capsys):
    fashion, scenes = make_fake_scenes(tmp_path, train=8, test=2)
    out = tmp_path / "study"
    grid = ["stages.select.grid.timesteps=[10]", "stages.select.grid.blocks=[10,13]", "vars.heldout=2"]
    study = ["study", str(STUDIES / "scenes_segmentation.yaml"), f"data.root={scenes}", f"data.fashion_root={fashion}",
             f"out={out}", "seeds=[0]", "vars.iterations=1", "vars.select_iterations=1", "vars.max_test=2", *grid]
    assert main(study) == 0
    select = json.loads((out / "select" / "result.json").read_text())["result"]
    assert [r["id"] for r in select["runs"]] == ["t10_b10", "t10_b13"]
    best = max(select["runs"], key=lambda r: r["mean"])
    assert (select["chosen"]["t"], select["chosen"]["b"]) == tuple(int(x[1:]) for x in best["id"].split("_"))
    config = json.loads((out / "select" / "t10_b10-seed0" / "metrics.json").read_text())["config"]
    assert config["data"]["test_root"] == str(out / "heldout" / "scenes") and config["data"]["test_split"] == "train"
    final = json.loads((out / "final" / "result.json").read_text())["result"]
    assert [len(r["values"]) for r in final["runs"]] == [1, 1, 1, 1]
    assert final["runs"][0]["name"] == f"shipped U-Net, b = {select['chosen']['b']}"
    assert final["runs"][1]["name"].endswith("B = {19, 16, 13, 10}")
    shipped = json.loads((out / "final" / "shipped-seed0" / "metrics.json").read_text())["config"]
    assert shipped["features"]["blocks"] == [select["chosen"]["b"]] and shipped["run"]["overlays"] == 4
    resnet = json.loads((out / "final" / "resnet18-seed0" / "metrics.json").read_text())["config"]
    assert resnet["model"]["name"] == "timm:resnet18" and resnet["run"]["finetune"] is True
    trained = {r["id"]: r["parameters"] for r in final["runs"]}
    assert trained["random"] == trained["shipped"] > 0, "the same UperNet on either U-Net"
    assert trained["resnet18"] > 11_000_000, "the fine-tuned ResNet-18 (11.2M without its classifier) is trained too"
    base = yaml.safe_load((out / "final" / "shipped.yaml").read_text())["base"]
    assert not Path(base).is_absolute() and (out / "final" / base).resolve() == STUDIES.parent / "scenes_upernet_fmnist.yaml"
    assert "| The trained U-Net's features segment better than a random-init copy's |" in (out / "report.md").read_text()
    stamps = _stamps(out)
    assert main(study) == 0
    assert _stamps(out) == stamps, "a rerun trains nothing again"
    changed = [a if a != "vars.iterations=1" else "vars.iterations=2" for a in study]
    assert main(changed) == 0
    after = _stamps(out)
    assert all(after[p] == t for p, t in stamps.items() if "select" in p.parts), "the selection did not run again"
    assert len(list(out.glob("final@*"))) == 1, "the other budget's runs are kept aside"
    assert json.loads((out / "final" / "shipped-seed0" / "metrics.json").read_text())["step"] == 2
    assert main(["scenes-study", "--scenes", str(scenes), "--out", str(out), "--timestep", "10"]) == 2
    assert "--timestep and --block are for --task detection" in capsys.readouterr().err
