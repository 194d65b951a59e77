"""``difrep sample``: a PNG grid of the right size, reproducible per seed, DDPM and DDIM, with the shipped model
(a random-init ADM predicts eps = 0 everywhere, since its output layer starts at zero, so it cannot tell a
working sampler from a broken one)."""

from __future__ import annotations

import torch
from PIL import Image

from difrep.cli.main import main

SHIPPED = ["--model", "adm-fmnist-28", "--pretrained"]


def test_sample_writes_a_grid_and_is_reproducible(tmp_path, capsys):
    args = [*SHIPPED, "--num", "6", "--nrow", "3", "--steps", "10", "--batch-size", "4"]
    assert main(["sample", *args, "--out", str(tmp_path / "a.png"), "--save-tensor", str(tmp_path / "a.pt")]) == 0
    assert main(["sample", *args, "--out", str(tmp_path / "b.png"), "--save-tensor", str(tmp_path / "b.pt")]) == 0
    assert "6 images, DDIM with 10 steps" in capsys.readouterr().out
    assert Image.open(tmp_path / "a.png").size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2)
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert a.shape == (6, 1, 28, 28) and torch.equal(a, b) and a.abs().max() <= 1  # a grey model: grey samples
    assert main(["sample", *args, "--method", "ddpm", "--seed", "1", "--out", str(tmp_path / "c.png"),
                 "--save-tensor", str(tmp_path / "c.pt")]) == 0
    assert not torch.equal(torch.load(tmp_path / "c.pt"), a)


def test_samples_of_the_shipped_model_look_like_fashion_mnist(tmp_path):
    """Fashion-MNIST is dark garments' background (about -0.43 on average in [-1, 1]), unsaturated.
    A sampler that ignored the model, or a model predicting eps = 0, ends at +-1 almost everywhere."""
    for method, steps in (("ddim", "25"), ("ddpm", "50")):
        out = tmp_path / f"{method}.pt"
        assert main(["sample", *SHIPPED, "--method", method, "--steps", steps, "--num", "16",
                     "--out", str(tmp_path / f"{method}.png"), "--save-tensor", str(out)]) == 0
        x = torch.load(out)
        assert -0.8 < x.mean().item() < -0.1, (method, x.mean().item())
        assert (x.abs() > 0.99).float().mean().item() < 0.5, method
        assert x[:, :, :2].mean().item() < -0.3, f"{method}: the top rows should be (dark) background"


def test_sample_refuses_bad_requests(tmp_path, capsys):
    assert main(["sample", *SHIPPED, "--steps", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "sampling steps must be in 1..1000" in capsys.readouterr().err
    assert main(["sample", "--model", "adm", "--image_size", "32", "--num_channels", "32", "--channel_mult", "1,2",
                 "--class_cond", "true", "--out", str(tmp_path / "x.png")]) == 2
    assert "class-conditional" in capsys.readouterr().err
