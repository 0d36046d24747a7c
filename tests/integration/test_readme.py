"""The README's application example, run as written against a running service."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text()
    start = text.index("or in Python, as an application does it")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)  # type: ignore[union-attr]


def test_the_readme_example_reads_its_own_decision_and_its_reward_is_learned(
    settings_factory, start_service
):
    s = settings_factory(update_interval=1)
    running = start_service(s)
    code = (
        _example()
        .replace("127.0.0.1:9092", s.kafka_bootstrap_servers)
        .replace('"bandit.contexts"', repr(s.topic_contexts))
        .replace('"bandit.decisions"', repr(s.topic_decisions))
        .replace('"bandit.rewards"', repr(s.topic_rewards))
    )
    out = io.StringIO()
    scope: dict[str, object] = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the repo's own text
    action, probability = out.getvalue().split()
    decision = scope["decision"]
    assert isinstance(decision, dict) and decision["event_id"] == scope["event_id"]
    assert action in {"a", "b"} and 0 < float(probability) <= 1
    stats = running.service.stats
    wait_for(lambda: stats.rewards_learned >= 1, timeout=30, what="the reward learned")
    assert stats.rewards_joined == 1
