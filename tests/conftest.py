"""Fixtures shared by all tests."""

import pytest


@pytest.fixture(scope="session")
def guided_diffusion():
    return pytest.importorskip("guided_diffusion.script_util")
