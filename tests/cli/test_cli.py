"""The difrep command line."""

from __future__ import annotations

import torch

from difrep.cli.main import main
from difrep.models import create_model


def _rows(out: str) -> dict[int, list[str]]:
    return {int(line.split()[0]): line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()}


def test_info_prints_the_papers_block_table(capsys):
    assert main(["info", "adm-256-uncond"]) == 0
    out = capsys.readouterr().out
    assert "552.8M parameters, 37 blocks" in out
    rows = _rows(out)
    assert sorted(rows) == list(range(1, 38))
    assert rows[24] == ["24", "decoder", "output_blocks.4", "1024", "16"]
    assert rows[19] == ["19", "middle", "middle_block", "1024", "8"]


def test_info_takes_guided_diffusion_flags(capsys):
    assert main(["info", "adm", "--image_size", "32", "--num_channels=32", "--channel_mult", "1,2",
                 "--learn_sigma", "true"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 13 and rows[7][1] == "middle" and rows[7][3] == "64"


def test_info_checks_a_checkpoint(tmp_path, capsys):
    flags = dict(image_size=32, num_channels=32, channel_mult="1,2")
    torch.save(create_model("adm", **flags).state_dict(), tmp_path / "m.pt")
    assert main(["info", "adm", "--image_size", "32", "--num_channels", "32", "--channel_mult", "1,2",
                 "--checkpoint", str(tmp_path / "m.pt")]) == 0
    assert "all" in capsys.readouterr().out
    assert main(["info", "adm", "--image_size", "32", "--num_channels", "64", "--channel_mult", "1,2",
                 "--checkpoint", str(tmp_path / "m.pt")]) == 2
    assert "model expects (64, 3, 3, 3)" in capsys.readouterr().err


def test_info_lists_presets_and_rejects_bad_flags(capsys):
    assert main(["info"]) == 0
    assert "256x256_diffusion_uncond.pt" in capsys.readouterr().out
    assert main(["info", "adm", "--num_chanels", "3"]) == 2
    assert "unknown model flag --num_chanels" in capsys.readouterr().err
    assert main(["info", "adm", "--learn_sigma", "maybe"]) == 2
    assert "--learn_sigma takes true or false" in capsys.readouterr().err



def test_data_check_reports_counts_and_mismatches(tmp_path, capsys):
    from fakes import make_cub

    make_cub(tmp_path)
    assert main(["data", "check", "cub200", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "CUB-200-2011" in out
    assert out.count("MISMATCH") == 2
    assert "train           3          6      5,994  MISMATCH" in out


def test_data_check_verify_lists_unreadable_images(tmp_path, capsys):
    from fakes import make_cub

    base = make_cub(tmp_path)
    bad = base / "images" / "002.Bird_1" / "Bird_1_0.jpg"
    bad.write_bytes(bad.read_bytes()[:50])
    assert main(["data", "check", "cub200", str(tmp_path), "--splits", "train", "--verify", "--workers", "0"]) == 1
    out = capsys.readouterr().out
    assert f"unreadable image {bad}" in out and "decoded 5 of 6 images" in out


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from difrep.cli import info

    assert main(["info", "adm-999"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("difrep info: error: unknown model 'adm-999'") and "Traceback" not in err

    def broken(args, extra):
        raise KeyError("an internal key")  # a library bug, not the user's input

    monkeypatch.setattr(info, "run", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'an internal key'" in err and "bug in difrep" in err


def test_train_uses_the_shipped_weights_when_asked(tmp_path, capsys):
    import pytest
    from fakes import make_fashion_mnist

    from difrep.training import ClassificationTask, load_config

    make_fashion_mnist(tmp_path, n=20, prefixes=("train", "t10k"))
    args = ["model.name=adm-fmnist-28", "data.name=fashion-mnist", f"data.root={tmp_path}", "data.check=false",
            "data.workers=0", "features.blocks=[7]", "head.name=linear", "optim.epochs=1", "optim.batch_size=8",
            f"run.out={tmp_path / 'r'}",
            "run.progress=false", "run.tensorboard=false"]
    shipped = create_model("adm-fmnist-28", pretrained=True).state_dict()
    exp = ClassificationTask(load_config(None, [*args, "model.pretrained=true"]))
    for k, v in exp.model.state_dict().items():
        assert torch.equal(v, shipped[k]), k
    with pytest.warns(UserWarning, match="model.pretrained=true"):
        ClassificationTask(load_config(None, args))
    assert main(["train", *args, "model.pretrained=true"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_every_command_tears_its_process_group_down(tmp_path, capsys):
    """A process group left to the interpreter's exit may abort a finished torchrun process (gloo's threads)."""
    import torch.distributed as dist

    for code, command in ((0, ["info", "adm-256-uncond"]), (2, ["info", "adm-999"])):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / f'store{code}'}", rank=0, world_size=1)
        assert main(command) == code
        assert not dist.is_initialized(), command
