"""A broker outage under load: the service keeps running, reports not-ready, resumes by
itself, and no reward in flight is lost or learned twice.

Each test takes a broker of its own (a shared cluster cannot be taken away from here):
Apache Kafka's node is stopped and restarted on its data; the embedded broker, which keeps
everything in memory, is frozen (SIGSTOP / SIGCONT) instead.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from stream.apache_kafka import KafkaCluster
from stream.broker import EmbeddedBroker
from stream.kafka import admin_config
from stream.topics import ensure_topics
from tests.integration.conftest import Client, wait_for

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0


@contextmanager
def broker_away(broker: EmbeddedBroker | KafkaCluster) -> Iterator[None]:
    """The broker unreachable while inside; back (and answering) after."""
    if isinstance(broker, KafkaCluster):
        broker.stop_node(1)
        try:
            yield
        finally:
            broker.start_node(1)
            broker.wait_ready()
        return
    pid = broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _on_own_broker(settings_factory, broker: EmbeddedBroker | KafkaCluster, **update):
    """Fresh settings moved to ``broker`` (one this test may freeze), topics created."""
    settings = settings_factory().model_copy(
        update={"kafka_bootstrap_servers": broker.bootstrap_servers, **update}
    )
    ensure_topics(settings, AdminClient(admin_config(settings)))
    return settings


def test_broker_outage_under_load(settings_factory, start_service, own_broker, tmp_path):
    with own_broker() as broker:
        settings = _on_own_broker(
            settings_factory, broker, state_dir=tmp_path / "outage", checkpoint_interval_s=2.0
        )
        running = start_service(settings)
        svc = running.service
        client = Client(settings)
        sent = {"contexts": 0, "rewards": 0}
        stop = threading.Event()

        def traffic() -> None:  # contexts, and each one's reward 50 events later
            i = 0
            while not stop.is_set():
                client.context(f"e{i}", domain=f"d{i % 3}")
                sent["contexts"] += 1
                if i >= 50:
                    client.reward(f"e{i - 50}", float(i % 2), domain=f"d{(i - 50) % 3}")
                    sent["rewards"] += 1
                client.producer.poll(0)
                i += 1
                time.sleep(0.01)

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        wait_for(lambda: svc.stats.rewards_joined > 100, what="traffic flowing")
        assert svc._readiness()[0]

        try:
            with broker_away(broker):
                wait_for(
                    lambda: not svc._readiness()[0], timeout=15, what="not-ready during the outage"
                )
                end = time.monotonic() + OUTAGE_S - 5
                while time.monotonic() < end:  # the loop keeps turning throughout
                    assert running.thread.is_alive() and svc._healthy()[0], svc._healthy()
                    time.sleep(0.5)
            wait_for(lambda: svc._readiness()[0], timeout=30, what="ready again after the outage")
            time.sleep(2)
            stop.set()
            t.join(10)
            client.flush()
            # Every context decided (one replayed after the group dropped us during the
            # outage may be decided twice, with the same action and probability).
            decided: set[str] = set()
            deadline = time.monotonic() + 60
            while len(decided) < sent["contexts"] and time.monotonic() < deadline:
                for m in client.consumer.consume(1000, 0.5):
                    if m.error() is None:
                        decided.add(orjson.loads(m.value())["event_id"])
            assert decided == {f"e{i}" for i in range(sent["contexts"])}

            def learned() -> int:
                return sum(
                    st.policy.n_learned + len(st.buffer) for st in svc.domains.states.values()
                )

            # Every reward learned exactly once: none lost in flight, none twice on replay.
            wait_for(lambda: learned() == sent["rewards"], timeout=60, what="rewards learned")
            time.sleep(2)
            assert learned() == sent["rewards"]
            assert svc.stats.rejected_total == 0
            assert svc.broker is not None and svc.broker.outages >= 1
        finally:
            stop.set()
            running.stop()  # while its broker still runs
            client.close()


def test_sigterm_ends_the_process_within_the_shutdown_timeout_while_the_broker_is_away(
    settings_factory, own_broker, tmp_path
):
    """With the broker frozen, the final checkpoint's publish and commit cannot finish;
    SIGTERM still ends the process within RL_SHUTDOWN_TIMEOUT_S, and says why."""
    import subprocess
    import sys

    from stream.bench.harness import service_env

    with own_broker() as broker:
        settings = _on_own_broker(
            settings_factory, broker, state_dir=tmp_path / "term", shutdown_timeout_s=5.0
        )
        client = Client(settings)
        log = tmp_path / "service.log"
        with open(log, "w") as out:
            exe = os.path.join(os.path.dirname(sys.executable), "bandit-stream")
            proc = subprocess.Popen([exe, "run"], env=service_env(settings), stderr=out)
            try:
                for i in range(20):
                    client.context(f"e{i}")
                client.decisions(20, timeout=60)
                with broker_away(broker):
                    client.context("during")  # queued in the client only
                    started = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    code = proc.wait(30)
                    elapsed = time.monotonic() - started
            finally:
                if proc.poll() is None:
                    proc.kill()
                client.close()
        assert elapsed <= settings.shutdown_timeout_s + 1.5, (elapsed, log.read_text()[-2000:])
        text = log.read_text()
        assert code == 0 or "did not finish within RL_SHUTDOWN_TIMEOUT_S=5 s" in text, text[-2000:]
