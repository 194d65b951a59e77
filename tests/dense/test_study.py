"""The scenes study end to end at toy size: selection on held-out scenes, every variant and seed, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import make_fake_scenes

from difrep.dense.study import run_scenes_study
from difrep.errors import UserError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "scenes_upernet_fmnist.yaml"


def test_the_study_selects_on_held_out_scenes_runs_every_variant_and_resumes(tmp_path):
    fashion, scenes = make_fake_scenes(tmp_path, train=8, test=2)
    kwargs = dict(seeds=1, iterations=1, select_iterations=1, max_test=2, heldout=2, timesteps=[10],
                  blocks=[10, 13])
    summary = run_scenes_study(scenes, fashion, tmp_path / "study", CONFIG, **kwargs)
    assert len(summary["selection"]) == 2
    assert summary["chosen"] == max(summary["selection"], key=lambda r: r["heldout_mIoU"])
    assert [len(r["mIoU"]) for r in summary["results"]] == [1, 1, 1, 1]
    assert summary["results"][1]["variant"].endswith("B = {19, 16, 13, 10}")
    assert (tmp_path / "study" / "heldout" / "ADEChallengeData2016" / "images" / "training").is_dir()
    finished = sorted((tmp_path / "study").glob("**/metrics.json"))
    stamps = [p.stat().st_mtime_ns for p in finished]
    again = run_scenes_study(scenes, fashion, tmp_path / "study", CONFIG, **kwargs)
    assert again["results"] == summary["results"]
    assert [p.stat().st_mtime_ns for p in finished] == stamps, "a rerun trains nothing again"
    with pytest.raises(UserError, match=r"other settings \(changed: iterations\)"):  # never two protocols in one folder
        run_scenes_study(scenes, fashion, tmp_path / "study", CONFIG, **{**kwargs, "iterations": 2})
