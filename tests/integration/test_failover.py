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

import orjson
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.apache_kafka import KafkaCluster
from tests.integration.conftest import ENGINE_LINE, ENGINE_PARAMS, Client, settings_on, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif("kafka" not in ENGINE_PARAMS, reason=f"needs Apache Kafka ({ENGINE_LINE})"),
]

READY_WITHIN_S = 30.0


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
        sent = {"contexts": 0, "rewards": 0}
        stop = threading.Event()

        def traffic() -> None:  # contexts over 12 domains, each rewarded 50 events later
            i = 0
            while not stop.is_set():
                client.context(f"e{i}", domain=f"d{i % 12}")
                sent["contexts"] += 1
                if i >= 50:
                    client.reward(f"e{i - 50}", float(i % 2), domain=f"d{(i - 50) % 12}")
                    sent["rewards"] += 1
                client.producer.poll(0)
                i += 1
                time.sleep(0.005)

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
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
            stop.set()
            t.join(10)
            client.flush()

            decided: set[str] = set()
            deadline = time.monotonic() + 90
            while len(decided) < sent["contexts"] and time.monotonic() < deadline:
                for m in client.consumer.consume(1000, 0.5):
                    if m.error() is None:
                        decided.add(orjson.loads(m.value())["event_id"])
            assert decided == {f"e{i}" for i in range(sent["contexts"])}

            def learned() -> int:
                return sum(
                    st.policy.n_learned + len(st.buffer) for st in svc.domains.states.values()
                )

            # Each distinct reward learned exactly once: none lost, none twice on a replay.
            wait_for(lambda: learned() == sent["rewards"], timeout=90, what="rewards learned")
            time.sleep(2)
            assert learned() == sent["rewards"]
            assert running.thread.is_alive() and not svc.failed
            assert svc.stats.rejected_total == 0
        finally:
            stop.set()
            probe.stop()
            running.stop()
            client.close()
