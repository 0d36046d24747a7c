"""Rewards already in the topic are never lost to a full set of pending joins."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def test_a_backlog_read_contexts_first_loses_no_reward(settings_factory, start_service):
    # After downtime: 1,000 contexts and their rewards (each 20 events later) wait in the
    # topics, record timestamps 50 ms apart. Read as they come, the contexts' partitions
    # fill far more than RL_MAX_PENDING = 200 decisions before their rewards are read:
    # without the contexts pausing, most would be evicted with the default reward and
    # their real rewards dead-lettered as expired.
    settings = settings_factory(max_pending=200, batch_size=50)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 5})
    t0 = int(time.time() * 1000) - 120_000
    n, trail = 1000, 20
    for i in range(n):
        doc = {
            "event_id": f"e{i}",
            "domain": "d1",
            "context": {"x": i % 7},
            "candidates": ["a", "b"],
        }
        producer.produce(settings.topic_contexts, orjson.dumps(doc), b"d1", timestamp=t0 + 50 * i)
    for i in range(n):
        doc = {"event_id": f"e{i}", "domain": "d1", "reward": float(i % 2)}
        producer.produce(
            settings.topic_rewards, orjson.dumps(doc), b"d1", timestamp=t0 + 50 * (i + trail)
        )
    assert producer.flush(10) == 0
    running = start_service(settings)
    stats = running.service.stats
    wait_for(lambda: stats.rewards_joined + stats.late_rewards >= n, what="every reward read")
    assert stats.decisions == n
    assert stats.evicted == 0 and stats.late_rewards == 0
    assert stats.rewards_joined == n
    registry = running.service.metrics.registry
    pauses = sum(
        registry.get_sample_value("bandit_topic_pauses_total", {"topic": t}) or 0.0
        for t in (settings.topic_contexts, settings.topic_rewards)
    )
    assert pauses >= 1
