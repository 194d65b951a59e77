"""``difrep show``: feature pictures of image files, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from difrep.cli.main import main

TINY = ["--model", "adm", "--image_size", "16", "--num_channels", "32", "--channel_mult", "1,2"]  # 13 blocks


@pytest.fixture()
def picture(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def _show(tmp_path, picture, name, timesteps, blocks, *more):
    out = tmp_path / name
    code = main(["show", *TINY, "--image", str(picture), *more, "--timesteps", timesteps, "--blocks", blocks,
                 "--out", str(out)])
    return code, out


def test_show_writes_a_png_that_grows_with_blocks_and_timesteps(tmp_path, picture, capsys):
    code, small = _show(tmp_path, picture, "small.png", "10", "3")
    assert code == 0 and str(small) in capsys.readouterr().out
    with Image.open(small) as img:
        base = img.size
    code, wide = _show(tmp_path, picture, "wide.png", "10", "3,7,11")
    assert code == 0
    with Image.open(wide) as img:
        assert img.size[0] > base[0] and img.size[1] == base[1]
    code, tall = _show(tmp_path, picture, "tall.png", "10,100", "3", "--image", str(picture))
    assert code == 0
    with Image.open(tall) as img:
        assert img.size[0] == base[0] and img.size[1] > 3 * base[1] // 2  # 2 images x 2 steps: 4 rows


def test_show_on_a_grey_model(tmp_path, picture):
    with pytest.warns(UserWarning, match="random weights"):
        code = main(["show", "--model", "adm-fmnist-28", "--image", str(picture), "--timesteps", "50",
                     "--blocks", "4", "--out", str(tmp_path / "grey.png")])
    assert code == 0
    with Image.open(tmp_path / "grey.png") as img:
        img.load()


def test_show_refuses_missing_files_and_bad_settings(tmp_path, picture, capsys):
    missing = tmp_path / "nope.png"
    assert _show(tmp_path, picture, "a.png", "10", "3", "--image", str(missing))[0] == 2
    assert str(missing) in capsys.readouterr().err
    assert _show(tmp_path, picture, "b.png", "10", "3,99")[0] == 2
    assert "[99]" in capsys.readouterr().err
    assert _show(tmp_path, picture, "c.png", "5000", "3")[0] == 2
    assert "5000" in capsys.readouterr().err
    assert main(["show", *TINY, "--image", str(picture), "--blocks", "3", "--out", str(tmp_path / "d.png")]) == 2
    assert "--timesteps" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("a.png", "b.png", "c.png", "d.png"))
