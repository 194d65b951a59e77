"""Fixtures shared by all tests."""

import os

import pytest
import torch
from reference import randomize_

from difrep.models import create_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES, scope="session")
def device(request) -> torch.device:
    """Every test that runs a model takes its device from here: the CPU always, CUDA as well where present."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def guided_diffusion():
    """guided-diffusion's own code, the reference implementation. `make test` and CI set
    DIFREP_REQUIRE_REFERENCE=1, so that a missing reference fails the suite instead of skipping 25 checks."""
    if os.environ.get("DIFREP_REQUIRE_REFERENCE") == "1":
        import guided_diffusion.script_util as script_util

        return script_util
    return pytest.importorskip("guided_diffusion.script_util")


@pytest.fixture(scope="module")
def unet():
    """A small ADM U-Net like the paper's (legacy attention, head channels, BigGAN updown), random weights."""
    torch.manual_seed(0)
    model = create_model(
        "adm", image_size=32, num_channels=32, channel_mult="1,2,2", attention_resolutions="16,8",
        num_head_channels=8, resblock_updown=True, learn_sigma=True,
    )
    return randomize_(model).eval()


@pytest.fixture()
def unet_on(unet, device):
    """The small U-Net, copied to the test's device."""
    import copy

    return copy.deepcopy(unet).to(device)


@pytest.fixture(scope="session")
def backbone_folders(tmp_path_factory):
    """Tiny random-weight diffusers folders, written once: an ADM-shaped UNet2DModel pipeline (ddpm/), Stable
    Diffusion (sd/) and a DiT pipeline (dit/)."""
    from backbone_factories import save_dit_pipeline, save_sd_folder, save_unet2d_folder

    root = tmp_path_factory.mktemp("backbones")
    save_unet2d_folder(root / "ddpm")
    save_sd_folder(root / "sd")
    save_dit_pipeline(root / "dit")
    return root
