"""One broker per engine per test session, fresh topics and consumer group per test.

``BANDIT_TEST_BROKER=embedded|kafka|both`` chooses the engines the integration tests run
on (default: both when Apache Kafka can start here, else embedded, saying why), each
started once for the session. ``RL_TEST_BOOTSTRAP_SERVERS`` names an existing cluster to
use instead (tests that stop or kill brokers then start their own).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.config import Settings, load_settings
from stream.kafka.apache import KafkaCluster
from stream.kafka.brokers import ENGINES, kafka_unavailable, make_broker
from stream.kafka.clients import admin_config
from stream.kafka.embedded import FAST_CLIENT_SETTINGS, EmbeddedBroker
from stream.kafka.topics import ensure_topics
from stream.service import Service

pytestmark = pytest.mark.integration

EXTERNAL = os.environ.get("RL_TEST_BOOTSTRAP_SERVERS")


def _select_engines() -> tuple[list[str], str]:
    """The engines to run on, and one line saying which and why."""
    if EXTERNAL:
        return ["external"], f"broker: the cluster at RL_TEST_BOOTSTRAP_SERVERS={EXTERNAL}"
    choice = os.environ.get("BANDIT_TEST_BROKER", "").strip().lower()
    if choice and choice not in (*ENGINES, "both"):
        raise pytest.UsageError(f"BANDIT_TEST_BROKER={choice}: expected embedded, kafka or both")
    if choice == "embedded":
        return ["embedded"], "broker engines: embedded (BANDIT_TEST_BROKER=embedded)"
    why = kafka_unavailable()
    if choice == "kafka":
        if why:
            raise pytest.UsageError(f"BANDIT_TEST_BROKER=kafka: {why}")
        return ["kafka"], "broker engines: kafka (BANDIT_TEST_BROKER=kafka)"
    if why:
        return ["embedded"], f"broker engines: embedded only; Apache Kafka cannot start: {why}"
    return ["embedded", "kafka"], "broker engines: embedded and kafka"


ENGINE_PARAMS, ENGINE_LINE = _select_engines()


def pytest_report_header() -> str:
    return ENGINE_LINE


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(ENGINE_LINE)


@pytest.fixture(scope="session", params=ENGINE_PARAMS)
def engine(request: pytest.FixtureRequest) -> str:
    """The session broker's engine: embedded, kafka, or external."""
    return str(request.param)


@pytest.fixture(scope="session")
def session_broker(engine: str) -> Iterator[EmbeddedBroker | KafkaCluster | None]:
    """The broker shared by the session's tests on ``engine`` (None: external)."""
    if engine == "external":
        yield None
        return
    with make_broker(engine) as broker:  # type: ignore[arg-type]
        yield broker


@pytest.fixture(scope="session")
def bootstrap(session_broker: EmbeddedBroker | KafkaCluster | None) -> str:
    return session_broker.bootstrap_servers if session_broker else str(EXTERNAL)


@pytest.fixture
def own_broker(engine: str) -> Callable[..., EmbeddedBroker | KafkaCluster]:
    """A broker of the session's engine that the test alone uses, and may stop or kill
    (embedded when the session uses an external cluster)."""

    def make(nodes: int = 1) -> EmbeddedBroker | KafkaCluster:
        return make_broker("embedded" if engine == "external" else engine, nodes=nodes)  # type: ignore[arg-type]

    return make


def settings_on(bootstrap: str, state_root: Any, **overrides: Any) -> Settings:
    """Settings on fresh topics and a fresh group of ``bootstrap``; the topics exist when
    it returns."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        **FAST_CLIENT_SETTINGS,
        "kafka_bootstrap_servers": bootstrap,
        "kafka_group_id": f"test-{tag}",
        "topic_contexts": f"t-{tag}.contexts",
        "topic_rewards": f"t-{tag}.rewards",
        "topic_decisions": f"t-{tag}.decisions",
        "topic_metrics": f"t-{tag}.metrics",
        "topic_dead_letter": f"t-{tag}.dead-letter",
        "topic_state": f"t-{tag}.state",
        "topic_partitions": 2,
        "state_dir": state_root / f"state-{tag}",
        "update_interval": 1,
        # Windows close a second after their deadline: one broker, nothing in failover.
        "reward_grace_s": 1.0,
        "reward_quiet_grace_s": 1.0,
        "poll_timeout_s": 0.05,
        "metrics_port": 0,  # several services per process: each on a free port
    }
    values.update(overrides)
    settings = load_settings(**values)
    ensure_topics(settings, AdminClient(admin_config(settings)))
    return settings


@pytest.fixture
def settings_factory(bootstrap: str, tmp_path: Any) -> Callable[..., Settings]:
    """Settings on fresh topics and a fresh group of the session's broker."""

    def make(**overrides: Any) -> Settings:
        return settings_on(bootstrap, tmp_path, **overrides)

    return make


@dataclass
class Running:
    service: Service
    thread: threading.Thread

    def stop(self, timeout: float = 30.0) -> None:
        self.service.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "service did not stop"


@pytest.fixture
def start_service() -> Iterator[Callable[[Settings], Running]]:
    """Run a Service in a thread until the test ends; waits for its partition assignment."""
    running: list[Running] = []

    def start(settings: Settings) -> Running:
        service = Service(settings)
        errors: list[BaseException] = []

        def target() -> None:
            try:
                service.run()
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)
                raise

        thread = threading.Thread(target=target, name="service", daemon=True)
        thread.start()
        assert service.ready.wait(30), f"service never got partitions: {errors}"
        r = Running(service, thread)
        running.append(r)
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


class Client:
    """What an application does: produce contexts and rewards, read decisions."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        # Idempotent, as an application should be: a retry after a broker failover then
        # never writes a context or reward twice.
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "linger.ms": 1,
                "enable.idempotence": True,
            }
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        md = self.consumer.list_topics(settings.topic_decisions, timeout=10)
        parts = md.topics[settings.topic_decisions].partitions
        self.consumer.assign([TopicPartition(settings.topic_decisions, p, 0) for p in parts])

    def send_raw(self, topic: str, value: bytes | None, key: bytes | None) -> None:
        self.producer.produce(topic, value, key)

    def context(
        self,
        event_id: str,
        domain: str = "d1",
        candidates: list[str] | None = None,
        context: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        doc = {
            "event_id": event_id,
            "domain": domain,
            "context": context if context is not None else {"x": 1.0},
            "candidates": candidates or ["a", "b", "c"],
            **extra,
        }
        self.send_raw(self.s.topic_contexts, orjson.dumps(doc), domain.encode())

    def reward(self, event_id: str, reward: float, domain: str = "d1") -> None:
        doc = {"event_id": event_id, "domain": domain, "reward": reward}
        self.send_raw(self.s.topic_rewards, orjson.dumps(doc), domain.encode())

    def flush(self) -> None:
        assert self.producer.flush(10) == 0

    def decisions(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Read exactly ``n`` decisions (fails on fewer), then check no extra one follows."""
        self.flush()
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for m in self.consumer.consume(num_messages=1000, timeout=0.2):
                assert m.error() is None, m.error()
                out.append(orjson.loads(m.value()))
        assert len(out) >= n, f"got {len(out)} decisions, expected {n}"
        extra = self.consumer.consume(num_messages=10, timeout=1.0)
        out.extend(orjson.loads(m.value()) for m in extra if m.error() is None)
        return out

    def learned_before_marker(self, learned: Callable[[], int], domain: str = "d1") -> int:
        """How many rewards ``learned()`` counts once everything sent so far is processed:
        a marker event is decided and rewarded after it (same partitions, so in order) and
        waited for. Any learn besides the marker's shows up in the number returned."""
        before = learned()
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        self.context(marker, domain=domain)
        assert [d for d in self.decisions(1) if d["event_id"] == marker]
        self.reward(marker, 1.0, domain=domain)
        self.flush()
        wait_for(lambda: learned() > before, what="the marker's reward learned")
        return learned() - 1

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def client_factory() -> Iterator[Callable[[Settings], Client]]:
    clients: list[Client] = []

    def make(settings: Settings) -> Client:
        c = Client(settings)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class SteadyTraffic:
    """Contexts over ``domains`` domains every ``gap_s``, each rewarded 50 events later,
    from a thread, until :meth:`stop`."""

    def __init__(self, client: Client, domains: int, gap_s: float) -> None:
        self.client = client
        self.contexts = 0
        self.rewards = 0
        self._domains = domains
        self._gap_s = gap_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i, n = 0, self._domains
        while not self._stop.is_set():
            self.client.context(f"e{i}", domain=f"d{i % n}")
            self.contexts += 1
            if i >= 50:
                self.client.reward(f"e{i - 50}", float(i % 2), domain=f"d{(i - 50) % n}")
                self.rewards += 1
            self.client.producer.poll(0)
            i += 1
            time.sleep(self._gap_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.flush()


def assert_nothing_lost(traffic: SteadyTraffic, service: Service, timeout: float = 60.0) -> None:
    """Every context decided (one replayed after a group drop may be decided twice, with
    the same action and probability) and every reward learned exactly once."""
    decided: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(decided) < traffic.contexts and time.monotonic() < deadline:
        for m in traffic.client.consumer.consume(1000, 0.5):
            if m.error() is None:
                decided.add(orjson.loads(m.value())["event_id"])
    assert decided == {f"e{i}" for i in range(traffic.contexts)}

    def learned() -> int:
        states = service.domains.states.values()
        return sum(st.baseline.n_learned + len(st.buffer) for st in states)

    # None lost in flight, none twice on a replay.
    wait_for(lambda: learned() == traffic.rewards, timeout=timeout, what="rewards learned")
    time.sleep(2)
    assert learned() == traffic.rewards
    assert service.metrics.rejected_total == 0
