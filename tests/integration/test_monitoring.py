"""Prometheus, health endpoints and the metrics topic of a running service."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


def test_metrics_health_and_the_metrics_topic_show_what_happened(
    settings_factory, start_service, client_factory
):
    settings = settings_factory(metrics_interval_s=1.0, enable_rl_shadow_eval=True)
    running = start_service(settings)
    svc = running.service
    port = svc.metrics_port
    assert port
    assert get(port, "/healthz")[0] == 200
    status, body = get(port, "/readyz")
    assert status == 200 and "ready" in body

    client = client_factory(settings)
    for i in range(20):
        client.context(f"m{i}", domain="shop")
    client.decisions(20)
    for i in range(5):
        client.reward(f"m{i}", 1.0, domain="shop")
    client.reward("nobody", 1.0, domain="shop")  # unmatched (held early, then unknown)
    client.send_raw(settings.topic_contexts, b"{not json", b"shop")
    client.flush()
    wait_for(lambda: svc.stats.rewards_joined == 5 and svc.metrics.rejected_total == 1)

    text = get(port, "/metrics")[1]
    assert sample(text, 'bandit_decisions_total{domain="shop",variant="control"}') == 20
    assert sample(text, 'bandit_rewards_total{domain="shop",outcome="joined"}') == 5
    assert sample(text, "bandit_rejected_total{") == 1
    assert sample(text, "bandit_decision_latency_seconds_count") == 20
    assert "bandit_pending_joins" in text and "bandit_rss_bytes" in text

    # The metrics topic: one event per active domain and window, with these counts.
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": "metrics-reader",
            "enable.auto.commit": False,
        }
    )
    md = reader.list_topics(settings.topic_metrics, timeout=10).topics[settings.topic_metrics]
    reader.assign([TopicPartition(settings.topic_metrics, p, 0) for p in md.partitions])
    events: list[dict] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        events += [orjson.loads(m.value()) for m in reader.consume(100, 0.5) if not m.error()]
        if (
            sum(e["rewards_joined"] for e in events) >= 5
            and sum(e["decisions"] for e in events) >= 20
        ):
            break
    reader.close()
    shop = [e for e in events if e["domain"] == "shop"]
    assert sum(e["decisions"] for e in shop) == 20
    assert sum(e["rewards_joined"] for e in shop) == 5
    last = shop[-1]
    for key in (
        "latency_ms",
        "reward",
        "pending_joins",
        "rss_mb",
        "error_rate",
        "alerts",
        "shadow",
    ):
        assert key in last
    with_shadow = [e for e in shop if e["shadow"]]
    assert with_shadow and "shadow:offset_tree" in with_shadow[-1]["shadow"]

    svc.stop()  # while it finishes it reports not-ready, so no traffic is routed to it
    assert svc.probes.readiness() == (False, "stopping\n")
