"""benchmarks/gpu_check.py, the one script a GPU user runs, smoke-tested on the CPU with a tiny ADM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_passes_every_check_on_the_cpu(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert lines[0] == "| check | status | images/s | peak GPU memory (MiB) |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    names = [row[0] for row in rows]
    assert len(rows) == 23, names
    for name, status, _images_per_s, peak in rows:
        assert peak == "-", "no GPU memory on the CPU"
        if name.startswith("DDP"):
            assert status.startswith("skipped ("), (name, status)
        else:
            assert status.startswith("pass"), (name, status)
    for head in ("linear", "mlp", "cnn", "attention", "difformer", "difeed"):
        assert any(n.endswith(f": {head}") for n in names), f"no training step of {head}"
    assert sum(n.startswith("extract ") for n in names) == 7
    assert sum(n.startswith("train() ") for n in names) == 3
    assert out.read_text() in proc.stdout, "--out writes the table that is printed"
