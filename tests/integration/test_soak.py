"""A short soak through the real broker: every valid context decided, every piece of
garbage dead-lettered, the service process alive and exiting 0, the report written."""

from __future__ import annotations

import orjson
import pytest

from stream.bench.soak import run_soak

pytestmark = pytest.mark.integration


def test_short_soak(bootstrap, engine, tmp_path):
    r = run_soak(4000, 0.02, tmp_path, bootstrap=bootstrap, seed=3, engine=engine)
    assert r["garbage"] > 40
    assert r["decisions"] == r["valid_contexts"] == 4000 - r["garbage"]
    assert r["dead_letters"] == r["garbage"]
    assert r["crashes"] == 0 and r["exit_code"] == 0 and r["tracebacks_in_log"] == 0
    assert r["rss_mb"]
    saved = orjson.loads((tmp_path / "soak.json").read_bytes())
    assert saved["decisions_equal_valid"] and saved["dead_letters_equal_garbage"]
    assert saved["broker"]["engine"] == engine
    assert (tmp_path / "soak.md").exists() and (tmp_path / "soak.png").stat().st_size > 1000
