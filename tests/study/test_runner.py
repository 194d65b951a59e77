"""The study runner: a tiny study's report against its stages' own outputs, keys that rerun only what changed,
findings judged from the numbers, and study files that name only stages, runs and settings that exist."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from difrep.cli.main import main
from difrep.data import DEBIAN_FASHION_MNIST
from difrep.errors import UserError
from difrep.evaluation.knn import knn_accuracy
from difrep.features.cache import FeatureCache, FeatureKey
from difrep.models import create_model
from difrep.study import KINDS, Judge, Study, load_study
from difrep.study.stages.base import Stage

STUDIES = Path(__file__).resolve().parents[2] / "configs" / "studies"
needs_data = pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")


def _random_weights(tmp_path: Path) -> Path:
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = create_model("adm-fmnist-28")
    path = tmp_path / "random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _tiny(tmp_path: Path) -> Path:
    study = {
        "title": "tiny", "description": "Probe on ${data.train_per_class} images a class.", "out": str(tmp_path / "out"),
        "seeds": [0],
        "data": {"name": "fashion-mnist", "root": str(DEBIAN_FASHION_MNIST), "train_per_class": 8, "test_per_class": 4,
                 "val_fraction": 0.25},
        "model": {"name": "adm-fmnist-28", "checkpoint": str(_random_weights(tmp_path))},
        "run": {"progress": False, "shard_size": 40, "chunk_size": 40, "batch_size": 40},
        "stages": {
            "sweep": {"kind": "sweep", "timesteps": [25, 100], "blocks": [4, 10, 13], "pool": 2, "probe": {"solver": "lbfgs"}},
            "knn": {"kind": "knn", "timestep": "${sweep.t}", "blocks": [4, 10, 13], "ks": [3, 5]},
        },
        "findings": [{"kind": "middle_block", "claim": "Middle blocks are best", "sweep": "sweep"},
                     {"kind": "knn_follows", "claim": "kNN follows the probe", "knn": "knn", "sweep": "sweep"}],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@needs_data
def test_a_tiny_study_reports_its_stages_own_numbers_and_reruns_only_what_changed(tmp_path, monkeypatch):
    path = _tiny(tmp_path)
    assert main(["study", str(path)]) == 0
    out = tmp_path / "out"
    sweep = json.loads((out / "sweep" / "result.json").read_text())["result"]
    knn = json.loads((out / "knn" / "result.json").read_text())["result"]
    rows = sweep["rows"]
    best = max(rows, key=lambda r: (round(r["probe_val_top1"], 6), round(r["knn20_val_top1"], 6), -r["dim"]))
    assert (sweep["best"]["t"], sweep["best"]["b"]) == (best["t"], best["b"]), "chosen on held-out accuracy"
    assert knn["t"] == best["t"], "the knn stage reads the sweep's choice"
    key = FeatureKey(best["t"], 10, 1)
    cache = {s: next(c for c in map(FeatureCache, sorted((out / "cache").glob(f"trained-{s}-*"))) if key in c.keys)
             for s in ("train", "test")}
    direct = knn_accuracy(cache["train"].features(key).to_tensor(), cache["train"].labels,
                          cache["test"].features(key).to_tensor(), cache["test"].labels, 10, ks=(3, 5))
    row = next(r for r in knn["rows"] if r["b"] == 10)
    assert row["k3_top1"] == pytest.approx(direct[3][1]) and row["k5_top5"] == pytest.approx(direct[5][5])
    report = (out / "report.md").read_text()
    assert "Probe on 8 images a class." in report
    assert f"held-out best b={best['b']}; middle block 10 of 1..19" in report
    kbest = max(knn["rows"], key=lambda r: r["k3_top1"])
    assert f"b={kbest['b']} ({kbest['k3_top1']:.1f}%)" in report, "the verdict quotes the knn stage's own number"
    assert f"test top-1 {best['probe_test_top1']:.1f}%" in report
    results = json.loads((out / "results.json").read_text())
    assert results["stages"]["knn"]["result"] == knn and len(results["findings"]) == 2

    def refuse(*args, **kwargs):
        raise AssertionError("an unchanged stage was recomputed")

    monkeypatch.setattr("difrep.study.stages.sweep.sweep_row", refuse)
    stamp = (out / "sweep" / "result.json").stat().st_mtime_ns
    assert main(["study", str(path), "stages.knn.ks=[2]"]) == 0
    assert (out / "sweep" / "result.json").stat().st_mtime_ns == stamp
    again = json.loads((out / "knn" / "result.json").read_text())["result"]
    assert set(again["rows"][0]) == {"t", "b", "pool", "k2_top1", "k2_top5"}, "the changed stage ran again"
    aside = list(out.glob("knn@*"))
    assert len(aside) == 1, "the knn result of the other setting is kept aside"
    monkeypatch.setattr("difrep.study.stages.probes.knn_accuracy", refuse)
    assert main(["study", str(path)]) == 0, "the first setting again: its result is read back"
    assert json.loads((out / "knn" / "result.json").read_text())["result"] == knn


@needs_data
def test_the_sweep_stage_can_search_automatically_and_reads_its_search_back(tmp_path, monkeypatch):
    path = _tiny(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["stages"] = {"sweep": {**spec["stages"]["sweep"], "timesteps": [10, 25, 100], "blocks": [2, 4, 6, 8, 10, 13],
                                "search": "auto", "search_options": {"first_per_class": 2, "growth": 3.0}}}
    spec["findings"] = [{"kind": "middle_block", "claim": "Middle blocks are best", "sweep": "sweep"}]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["study", str(path)]) == 0
    out = tmp_path / "out"
    sweep = json.loads((out / "sweep" / "result.json").read_text())["result"]
    choice, best = sweep["choice"], sweep["best"]
    assert (choice["timestep"], choice["block"], choice["pool"]) == (best["t"], best["b"], best["pool"])
    assert choice["search"] == "auto" and choice["grid_settings"] == 18 and choice["fit_images"] == 60
    lines = (out / "sweep" / "sweep.csv").read_text().splitlines()
    assert len(lines) - 1 == choice["settings_scored"] == len(sweep["scored"])
    rungs = sorted({x["fit_images"] for x in sweep["scored"]})
    assert rungs[0] == 20 and rungs[-1] == 60, "two images a class first, every fitting image last"
    final = [x for x in sweep["scored"] if x["fit_images"] == 60]
    assert len(final) < 18 and max(final, key=lambda x: x["held_out_top1"])["held_out_top1"] == pytest.approx(
        best["probe_val_top1"], abs=1e-3), "the choice is the held-out best of the last rung"
    assert best["t"] in sweep["chosen"]["T"] and best["b"] in sweep["chosen"]["B"]
    report = (out / "report.md").read_text()
    assert f"{choice['settings_scored']} scores of 18 settings" in report and "of it." in report
    assert "sweep/pictures.png" in report and (out / "sweep" / "pictures.png").stat().st_size > 1000

    def refuse(*args, **kwargs):
        raise AssertionError("a finished search was run again")

    monkeypatch.setattr("difrep.study.stages.sweep.search_settings", refuse)
    (out / "sweep" / "result.json").unlink()
    assert main(["study", str(path)]) == 0, "the saved search is read back"
    assert json.loads((out / "sweep" / "result.json").read_text())["result"]["best"] == best


def _stage(kind: str, name: str, settings: dict | None = None) -> Stage:
    return KINDS[kind](name, {"kind": kind, **(settings or {})}, "test.yaml")


def _row(t: int, b: int, pool: int, test: float) -> dict:
    return {"t": t, "b": b, "pool": pool, "probe_val_top1": test, "probe_test_top1": test, "probe_test_top5": 99.0,
            "knn20_val_top1": 0.0, "knn20_test_top1": 0.0, "dim": 1, "l2": None}


def _runs(**runs: list[float]) -> dict:
    return {"metric": "top1", "runs": [{"id": k, "name": k.capitalize(), "runs": [{"top1": v} for v in values]}
                                       for k, values in runs.items()]}


def test_findings_are_judged_from_the_numbers():
    rows = [_row(t, b, 2, 80 - 2 * abs(b - 10) - abs(t - 50) / 50) for t in (5, 50, 500) for b in range(1, 20)]
    pools = [_row(50, 10, p, 80 - 0.5 * p) for p in (1, 4)]
    sweep = {"model": "trained", "timesteps": [5, 50, 500], "num_blocks": 19, "middle_block": 10,
             "best": _row(50, 10, 2, 80), "rows": rows, "pool_rows": pools}
    stages = {"sweep": _stage("sweep", "sweep"), "random": _stage("sweep", "random"), "pixels": _stage("pixels", "pixels"),
              "knn": _stage("knn", "knn"), "heads": _stage("train", "heads"), "cka": _stage("cka", "cka")}
    results = {"sweep": sweep, "random": {**sweep, "model": "random", "best": _row(5, 3, 2, 70)},
               "pixels": {"probe_test_top1": 79.0},
               "knn": {"rows": [{"b": b, "k20_top1": 70 - abs(b - 12)} for b in range(1, 20)]},
               "heads": _runs(attention=[82, 83, 84], difformer=[83, 84, 85], mlp=[85, 86, 87], one=[40.0], two=[39.0],
                              bottleneck=[70, 71, 72], all=[60, 61, 62]),
               "cka": {"blocks": [1, 19], "timesteps": [5, 500], "across_blocks": [[1, 0.3], [0.3, 1]],
                       "across_timesteps": [[1, 0.9], [0.9, 1]]}}
    specs = [
        {"kind": "beats", "claim": "controls", "a": "sweep/best", "others": ["random/best", "pixels"]},
        {"kind": "middle_timestep", "claim": "t", "sweep": "sweep"},
        {"kind": "middle_block", "claim": "b", "sweep": "sweep"},
        {"kind": "sensitivity", "claim": "pool", "sweep": "sweep"},
        {"kind": "knn_follows", "claim": "knn", "knn": "knn", "sweep": "sweep"},
        {"kind": "compare", "claim": "attention", "a": "heads/attention", "b": "sweep/best", "section": "heads"},
        {"kind": "compare", "claim": "same pool", "a": "heads/attention", "b": "sweep/best@pool=4"},
        {"kind": "compare", "claim": "fusion", "a": "heads/difformer", "b": "heads/attention"},
        {"kind": "compare", "claim": "mlp", "a": "heads/attention", "b": "heads/mlp"},
        {"kind": "compare", "claim": "one seed", "a": "heads/one", "b": "heads/two"},
        {"kind": "best_of", "claim": "strategy", "scores": ["heads/bottleneck", "heads/all"], "expect": "heads/bottleneck"},
        {"kind": "cka_differs", "claim": "cka", "cka": "cka"},
    ]
    found = {f.claim: f for f in Judge(stages, results, "test.yaml").all(specs)}
    verdicts = {k: f.verdict for k, f in found.items()}
    assert verdicts == {"controls": "yes", "t": "yes", "b": "yes", "pool": "yes", "knn": "yes", "attention": "yes",
                        "same pool": "yes", "fusion": "within noise", "mlp": "no", "one seed": "yes (one seed)",
                        "strategy": "yes", "cka": "yes"}
    assert found["same pool"].evidence.startswith("Attention 83.0% vs linear probe, pool 4 78.0%")
    assert found["strategy"].evidence.endswith("(gap of the best to the next +10.0, larger std over seeds 1.0)")
    assert found["controls"].stage == "random" and found["attention"].stage == "heads" and found["knn"].stage == "knn"
    results["sweep"] = {**sweep, "best": _row(500, 2, 2, 60)}
    verdicts = {f.claim: f.verdict for f in Judge(stages, results, "test.yaml").all(specs[:3])}
    assert verdicts == {"controls": "no", "t": "no", "b": "no"}
    del results["heads"]
    assert [f.claim for f in Judge(stages, results, "test.yaml").all(specs[5:9])] == [], "unrun stages test nothing"


def test_a_study_file_names_only_stages_and_settings_that_exist(tmp_path):
    base = {"title": "t", "out": str(tmp_path), "stages": {"sweep": {"kind": "sweep"}, "knn": {"kind": "knn", "timestep": "${sweep.t}"}}}

    def study(**changes) -> Study:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**base, **changes}, sort_keys=False))
        return Study(load_study(path))

    study()
    with pytest.raises(UserError, match=r"stage 'sweep' \(sweep\): unknown setting\(s\) \['timestep'\]"):
        study(stages={"sweep": {"kind": "sweep", "timestep": 5}})
    with pytest.raises(UserError, match="unknown kind 'sweeep'"):
        study(stages={"sweep": {"kind": "sweeep"}})
    with pytest.raises(UserError, match="stage 'knn' reads stage 'sweep', which comes after it"):
        study(stages={"knn": {"kind": "knn", "timestep": "${sweep.t}"}, "sweep": {"kind": "sweep"}})
    with pytest.raises(UserError, match=r"reads \$\{swep\.\.\.\}, which is not a stage"):
        study(stages={"knn": {"kind": "knn", "timestep": "${swep.t}"}})
    with pytest.raises(UserError, match=r"unknown section\(s\) \['stage'\]"):
        study(stage={})


@pytest.mark.parametrize("name", ["demo", "fashion_mnist", "scenes_segmentation", "scenes_detection", "dit_fashion_mnist"])
def test_the_shipped_study_files_findings_name_existing_stages_and_runs(name):
    spec = load_study(STUDIES / f"{name}.yaml")
    study = Study(spec)
    for stage in study.stages.values():
        if stage.kind == "train":
            stage.check()  # every run well formed, no two runs in one folder
    for finding in spec.findings:
        names = [finding[k] for k in ("a", "b", "expect") if k in finding] + finding.get("others", []) + finding.get("scores", [])
        for score in names:
            stage, _, selector = score.partition("/")
            assert stage in study.stages, (name, score)
            if study.stages[stage].kind == "train":
                ids = {study.stages[stage].run_id(r) for r in study.stages[stage].runs()}
                assert selector.partition(":")[0] in ids, (name, score, ids)
        for key in ("sweep", "knn", "cka"):
            if key in finding:
                assert study.stages[finding[key]].kind == key, (name, finding)
