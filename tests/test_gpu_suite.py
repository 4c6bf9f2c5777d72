"""benchmarks/gpu_suite.py runs end to end (tiny networks, CPU) and prints its one table: the
script meant for a lent GPU must not first fail there on a typo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_suite_runs_and_prints_every_part():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--tiny", "--repeats", "1",
                          "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    parts = {line.split(" | ")[0].strip("| ") for line in table}
    assert parts == {"decoder", "UNet step", "patch"}
    assert any("reference loop" in line for line in table)
    assert any("attention sharing, 3 frame(s)" in line for line in table)
    assert any("apply diff (conv, every tensor)" in line for line in table)
    assert "CPU" in out.stdout.splitlines()[0]
