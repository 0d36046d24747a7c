"""Shared by every test."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """A test that runs the CLI installs a handler on the stream pytest captured for that
    test; left in place, every later log line is written to a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _settings_from_the_test_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's RL_* variables never reach a test (RL_TEST_* choose its broker)."""
    for k in list(os.environ):
        if k.startswith(("RL_", "ENABLE_RL_")) and not k.startswith("RL_TEST_"):
            monkeypatch.delenv(k)
