"""Fixtures shared by all tests."""

import pytest
import torch
from reference import randomize_

from difrep.models import create_model


@pytest.fixture(scope="session")
def guided_diffusion():
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
