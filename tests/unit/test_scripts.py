"""The README's commands accept their documented arguments."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_forwards_its_arguments():
    # scripts/demo sources the venv helper; the helper must not take `--help` (or
    # `--events N`) for an extra to install. .venv exists: scripts/test made it.
    out = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--events" in out.stdout and "--rate" in out.stdout
