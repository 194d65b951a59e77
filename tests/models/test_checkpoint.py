"""Checkpoints load safely and strictly, and bad files fail with messages naming file and key."""

from __future__ import annotations

import os

import pytest
import torch
from reference import randomize_
from safetensors.torch import save_file

from difrep.models import CheckpointError, create_model

FLAGS = dict(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="16")


@pytest.fixture()
def trained_state():
    torch.manual_seed(0)
    return randomize_(create_model("adm", **FLAGS)).state_dict()


def _assert_same_model(model, state):
    ref = create_model("adm", **FLAGS)
    ref.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 40), ref(x, 40), rtol=0, atol=0)


def test_pt_round_trip(tmp_path, trained_state):
    path = tmp_path / "model.pt"
    torch.save(trained_state, path)
    model = create_model("adm", checkpoint=path, **FLAGS)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    _assert_same_model(model, trained_state)
    assert not model.training


def test_safetensors_and_half_precision_round_trip(tmp_path, trained_state):
    path = tmp_path / "model.safetensors"
    save_file({k: v.half().contiguous() for k, v in trained_state.items()}, str(path))
    model = create_model("adm", checkpoint=path, **FLAGS)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _assert_same_model(model, {k: v.half().float() for k, v in trained_state.items()})


def test_wrapped_and_ddp_prefixed_state_dicts_load(tmp_path, trained_state):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained_state.items()}, "step": 3}, path)
    _assert_same_model(create_model("adm", checkpoint=path, **FLAGS), trained_state)


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, trained_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({**trained_state, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused.*could run code"):
        create_model("adm", checkpoint=path, **FLAGS)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "missing"])
def test_unreadable_files_are_named(tmp_path, trained_state, damage):
    path = tmp_path / "bad.pt"
    torch.save(trained_state, path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        create_model("adm", checkpoint=path, **FLAGS)


def test_truncated_safetensors_is_named(tmp_path, trained_state):
    path = tmp_path / "bad.safetensors"
    save_file(trained_state, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: not a readable safetensors file"):
        create_model("adm", checkpoint=path, **FLAGS)


def test_class_conditional_checkpoint_into_unconditional_model(tmp_path):
    path = tmp_path / "cond.pt"
    torch.save(create_model("adm", class_cond=True, num_classes=10, **FLAGS).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        create_model("adm", checkpoint=path, **FLAGS)
    msg = str(err.value)
    assert "1 unexpected keys" in msg and "label_emb.weight (10, 128)" in msg
    assert "class-conditional" in msg


def test_shape_mismatch_names_key_and_expected_shape(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(create_model("adm", **{**FLAGS, "num_channels": 64}).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        create_model("adm", checkpoint=path, **FLAGS)
    assert "input_blocks.0.0.weight: checkpoint (64, 3, 3, 3), model expects (32, 3, 3, 3)" in str(err.value)


def test_classifier_checkpoint_into_unet_gets_a_hint(tmp_path):
    path = tmp_path / "classifier.pt"
    enc = create_model("adm-64-classifier", image_size=32, num_channels=64, channel_mult="1,2",
                       num_res_blocks=1, attention_resolutions="16", pool="adaptive", out_channels=10)
    torch.save(enc.state_dict(), path)
    with pytest.raises(CheckpointError, match="looks like a classifier"):
        create_model("adm", checkpoint=path, **{**FLAGS, "num_channels": 64})
