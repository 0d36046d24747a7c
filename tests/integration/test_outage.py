"""A broker outage under load: the service keeps running, reports not-ready, resumes by
itself, and no reward in flight is lost or learned twice.

Each test takes a broker of its own (a shared cluster cannot be taken away from here):
Apache Kafka's node is stopped and restarted on its data; the embedded broker, which keeps
everything in memory, is frozen (SIGSTOP / SIGCONT) instead.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka.admin import AdminClient

from stream.kafka.apache import KafkaCluster
from stream.kafka.clients import admin_config
from stream.kafka.embedded import EmbeddedBroker
from stream.kafka.topics import ensure_topics
from tests.integration.conftest import Client, SteadyTraffic, assert_nothing_lost, wait_for

pytestmark = pytest.mark.integration

OUTAGE_S = 15.0  # past the group session and the decisions producer's message timeout


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
        traffic = SteadyTraffic(client, domains=3, gap_s=0.01)
        wait_for(lambda: svc.stats.rewards_joined > 100, what="traffic flowing")
        assert svc.probes.readiness()[0]

        try:
            with broker_away(broker):
                wait_for(
                    lambda: not svc.probes.readiness()[0],
                    timeout=15,
                    what="not-ready during the outage",
                )
                end = time.monotonic() + OUTAGE_S - 5
                while time.monotonic() < end:  # the loop keeps turning throughout
                    assert running.thread.is_alive() and svc.probes.healthy()[0], (
                        svc.probes.healthy()
                    )
                    time.sleep(0.5)
            wait_for(
                lambda: svc.probes.readiness()[0], timeout=30, what="ready again after the outage"
            )
            time.sleep(2)
            traffic.stop()
            assert_nothing_lost(traffic, svc)
            assert svc.broker is not None and svc.broker.outages >= 1
        finally:
            traffic.stop()
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
