"""``difrep sample``: a PNG grid of the right size, reproducible per seed, DDPM and DDIM."""

from __future__ import annotations

import torch
from PIL import Image

from difrep.cli.main import main

TINY = ["--model", "adm", "--image_size", "32", "--num_channels", "32", "--channel_mult", "1,2",
        "--attention_resolutions", "16", "--learn_sigma", "true"]


def test_sample_writes_a_grid_and_is_reproducible(tmp_path, capsys):
    args = [*TINY, "--num", "6", "--nrow", "3", "--steps", "4", "--batch-size", "4"]
    assert main(["sample", *args, "--out", str(tmp_path / "a.png"), "--save-tensor", str(tmp_path / "a.pt")]) == 0
    assert main(["sample", *args, "--out", str(tmp_path / "b.png"), "--save-tensor", str(tmp_path / "b.pt")]) == 0
    assert "6 images, DDIM with 4 steps" in capsys.readouterr().out
    assert Image.open(tmp_path / "a.png").size == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2)
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and a.abs().max() <= 1
    assert main(["sample", *args, "--method", "ddpm", "--seed", "1", "--out", str(tmp_path / "c.png"),
                 "--save-tensor", str(tmp_path / "c.pt")]) == 0
    assert not torch.equal(torch.load(tmp_path / "c.pt"), a)


def test_sample_refuses_bad_requests(tmp_path, capsys):
    assert main(["sample", *TINY, "--steps", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "sampling steps must be in 1..1000" in capsys.readouterr().err
    assert main(["sample", "--model", "adm", "--image_size", "32", "--num_channels", "32", "--channel_mult", "1,2",
                 "--class_cond", "true", "--out", str(tmp_path / "x.png")]) == 2
    assert "class-conditional" in capsys.readouterr().err
