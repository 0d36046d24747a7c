"""`bandit-stream demo` runs end to end and the service beats uniform random."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_decides_learns_and_summarises():
    exe = os.path.join(os.path.dirname(sys.executable), "bandit-stream")
    env = dict(os.environ)  # RL_* of the developer's are gone (tests/conftest.py)
    out = subprocess.run(
        [exe, "demo", "--events", "6000", "--rate", "3000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "6000 decisions, 6000 rewards joined, 6000 learned, 0 messages skipped" in text
    for domain in ("model_routing", "content_analysis"):
        row = next(line for line in text.splitlines() if line.startswith(domain))
        cols = re.split(r"\s{2,}", row.strip())
        decisions, joined, mean, last, uniform = cols[1:6]
        assert int(decisions) == int(joined) > 2000
        # The hidden model's best per-context choice beats uniform by ~0.3; learning must show.
        assert float(last) > float(uniform) + 0.1, row
    # The stopped service released its Kafka clients before the embedded broker went, so
    # nothing complains about a lost connection after the summary.
    assert "Disconnected" not in out.stderr, out.stderr[-3000:]
