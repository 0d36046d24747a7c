"""Apache Kafka on three nodes: losing the busiest node, twice, loses nothing.

Topics have three replicas and ``min.insync.replicas=2``; the service produces with
``acks=all``. While contexts and rewards stream, the node leading most of the contexts and
decisions partitions is killed (-9), later restarted, then the same is done to another.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.kafka.apache import KafkaCluster
from tests.integration.conftest import (
    ENGINE_LINE,
    ENGINE_PARAMS,
    Client,
    SteadyTraffic,
    assert_nothing_lost,
    settings_on,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif("kafka" not in ENGINE_PARAMS, reason=f"needs Apache Kafka ({ENGINE_LINE})"),
]

READY_WITHIN_S = 30.0
# Longer than the broker's own failure detection (broker.session.timeout.ms, 9 s) plus
# an election: losing the group coordinator's node must not expire the member's session.
SESSION_TIMEOUT_MS = 15_000


def _busiest_node(admin: AdminClient, topics: list[str], among: set[int]) -> int:
    leaders: Counter[int] = Counter({n: 0 for n in among})
    md = admin.list_topics(timeout=10)
    for t in topics:
        for p in md.topics[t].partitions.values():
            if p.leader in among:
                leaders[p.leader] += 1
    return leaders.most_common(1)[0][0]


class ReadyzProbe:
    """Polls /readyz every 0.2 s; keeps (monotonic time, status) samples."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    status = r.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            self.samples.append((time.monotonic(), status))

    def ready_again_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first 200 from which every later sample is 200."""
        after = [(ts, st) for ts, st in self.samples if ts >= t]
        last_bad = max((ts for ts, st in after if st != 200), default=None)
        good = [ts for ts, st in after if st == 200 and (last_bad is None or ts > last_bad)]
        return good[0] - t if good else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_killing_the_busiest_node_twice_loses_nothing(start_service, tmp_path):
    with KafkaCluster(nodes=3) as cluster:
        settings = settings_on(
            cluster.bootstrap_servers,
            tmp_path,
            topic_partitions=6,
            checkpoint_interval_s=2.0,
            state_dir=tmp_path / "failover",
            kafka_session_timeout_ms=SESSION_TIMEOUT_MS,
            kafka_heartbeat_interval_ms=1_000,
        )
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
        res = ConfigResource("topic", settings.topic_contexts)
        described = admin.describe_configs([res])[res].result()
        assert described["min.insync.replicas"].value == "2"
        md = admin.list_topics(settings.topic_decisions, timeout=10)
        parts = md.topics[settings.topic_decisions].partitions.values()
        assert all(len(p.replicas) == 3 for p in parts)

        running = start_service(settings)
        svc = running.service
        assert svc.metrics_port
        probe = ReadyzProbe(svc.metrics_port)
        client = Client(settings)
        traffic = SteadyTraffic(client, domains=12, gap_s=0.005)
        try:
            wait_for(lambda: svc.stats.rewards_joined > 200, what="traffic flowing")
            topics = [settings.topic_contexts, settings.topic_decisions]
            killed: list[int] = []
            for _ in range(2):
                victim = _busiest_node(admin, topics, {1, 2, 3} - set(killed))
                killed.append(victim)
                joined = svc.stats.rewards_joined
                at = time.monotonic()
                cluster.kill_node(victim)
                # Decisions and joins resume on the two nodes left, and stay ready.
                wait_for(
                    lambda j=joined: svc.stats.rewards_joined > j + 200,
                    timeout=60,
                    what=f"rewards joined again after node {victim} was killed",
                )
                time.sleep(max(0.0, at + READY_WITHIN_S + 2 - time.monotonic()))
                back = probe.ready_again_after(at)
                assert back is not None and back <= READY_WITHIN_S, (victim, back)
                assert running.thread.is_alive() and not svc.failed
                cluster.start_node(victim)
                cluster.wait_ready()
                time.sleep(5)  # the restarted node catches up its replicas
            traffic.stop()
            assert_nothing_lost(traffic, svc, timeout=90)
            assert running.thread.is_alive() and not svc.failed
        finally:
            traffic.stop()
            probe.stop()
            running.stop()
            client.close()
