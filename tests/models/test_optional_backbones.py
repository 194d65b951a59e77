"""timm, diffusers and transformers are optional: never imported until asked for, a clear message when missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from difrep import create_model
from difrep.errors import UserError


def test_importing_difrep_and_its_cli_loads_no_optional_package():
    code = ("import sys, difrep, difrep.cli.main; difrep.create_model('adm-fmnist-28', pretrained=True); "
            "print(sorted(m for m in ('timm', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name, missing", [("timm:resnet50", "timm"), ("diffusers:/tmp", "diffusers"),
                                           ("sd:/tmp", "diffusers")])
def test_a_missing_package_is_named_with_the_extra_that_installs_it(name, missing, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    with pytest.raises(UserError, match=rf"needs the optional package '{missing}'.*difrep\[backbones\]"):
        create_model(name)


def test_unknown_names_list_the_families():
    with pytest.raises(UserError, match="timm:NAME.*diffusers:FOLDER.*sd:FOLDER"):
        create_model("resnet50")
    with pytest.raises(UserError, match="pretrained=True loads weights difrep ships"):
        create_model("timm:resnet50", pretrained=True)
