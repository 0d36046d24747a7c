"""The README's commands accept their documented arguments (no venv is created here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_venv_helper_ignores_the_callers_arguments(tmp_path):
    # scripts/demo forwards its arguments to the CLI; the sourced helper must not read them.
    probe = tmp_path / "probe.sh"
    probe.write_text(
        f'set -e\nPYTHON=true\nsource() {{ :; }}\n'
        f'VENV_EXTRA="" ; set -- --events 5\n'
        f'SPEC="."; if [ -n "${{VENV_EXTRA:-}}" ]; then SPEC=".[$VENV_EXTRA]"; fi\necho "$SPEC"\n'
    )
    out = subprocess.run(["bash", str(probe)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "."
    helper = (ROOT / "scripts" / "_venv.sh").read_text()
    assert "$1" not in helper and "VENV_EXTRA" in helper
