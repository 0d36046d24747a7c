"""The broker watch: unreachable only after failed metadata requests in a row."""

from __future__ import annotations

from typing import Any

from stream.config import load_settings
from stream.kafka.brokerwatch import BrokerWatch


class Answers:
    """list_topics that fails or answers as scripted."""

    def __init__(self, script: str) -> None:
        self.script = list(script)  # "x": fail, ".": answer

    def list_topics(self, timeout: float) -> Any:
        if self.script.pop(0) == "x":
            raise RuntimeError("timed out")
        return object()


def _run(script: str, misses: int = 2) -> list[bool]:
    watch = BrokerWatch(load_settings(kafka_bootstrap_servers="127.0.0.1:9"), misses=misses)
    admin = Answers(script)
    seen = []
    for _ in script:
        watch.check(admin)  # type: ignore[arg-type]
        seen.append(watch.reachable)
    watch.stop()
    return seen


def test_one_late_answer_is_not_an_outage():
    assert _run(".x.x.") == [True] * 5


def test_failures_in_a_row_mark_it_unreachable_until_an_answer():
    assert _run(".xxx.x") == [True, True, False, False, True, True]


def test_misses_one_reacts_to_the_first_failure():
    assert _run(".x.", misses=1) == [True, False, True]


def test_an_outage_is_counted_once():
    watch = BrokerWatch(load_settings(kafka_bootstrap_servers="127.0.0.1:9"))
    admin = Answers("xxxx.xx")
    for _ in range(7):
        watch.check(admin)  # type: ignore[arg-type]
    assert watch.outages == 2 and not watch.reachable
    watch.stop()
