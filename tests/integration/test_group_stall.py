"""A group that never assigns is named: in the log and in /readyz (docs/operations.md)."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer

from stream.service import Service
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_member_that_left_while_joining_is_named_on_the_embedded_broker(
    engine, settings_factory, caplog
):
    """Tansu keeps such a member as the group's leader for good (no later member is ever
    assigned); Apache Kafka assigns the next member at once."""
    s = settings_factory(assignment_timeout_s=2.0)
    leaver = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap_servers,
            "group.id": s.kafka_group_id,
            "session.timeout.ms": s.kafka_session_timeout_ms,
            "heartbeat.interval.ms": s.kafka_heartbeat_interval_ms,
        }
    )
    leaver.subscribe([s.topic_contexts])
    leaver.poll(0.3)  # its join is sent, and pending
    leaver.close()
    service = Service(s)
    thread = threading.Thread(target=service.run, name="service", daemon=True)
    caplog.set_level(logging.WARNING, logger="stream.state.membership")
    thread.start()
    try:
        if engine == "kafka":
            assert service.ready.wait(30), "never assigned"
            wait_for(lambda: not service.membership.stall, timeout=10, what="nothing to say")
            return
        wait_for(lambda: bool(service.membership.stall), timeout=30, what="the stall named")
        assert not service.ready.is_set()
        lines = [r.getMessage() for r in caplog.records if "no partitions assigned" in r.message]
        assert len(lines) == 1, lines  # once a minute at most
        assert "embedded broker" in lines[0] and "bandit-stream broker" in lines[0]
        assert service.metrics_port is not None
        status, body = _readyz(service.metrics_port)
        assert status == 503 and "no partitions assigned" in body and "embedded" in body
    finally:
        service.stop()
        thread.join(30)
        assert not thread.is_alive()
