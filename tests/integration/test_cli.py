"""The new-user path: `bandit-stream broker`, `bandit-stream run`, any Kafka client, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.kafka.embedded import free_port

pytestmark = pytest.mark.integration

BIN = os.path.join(os.path.dirname(sys.executable), "bandit-stream")
SECRET = "s3cret-sasl-passw0rd"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # RL_* of the developer's are gone (tests/conftest.py)
    env["RL_METRICS_PORT"] = "0"  # never collide with a service running on this machine
    env.update(extra)
    return env


def test_broker_command_prints_bootstrap_and_stops_on_sigterm(engine):
    """Of the session's engine (embedded when the session uses an external cluster)."""
    kafka = engine == "kafka"
    port = free_port()
    extra = ["--engine", "kafka"] if kafka else []
    proc = subprocess.Popen(
        [BIN, "broker", "--port", str(port), "--partitions", "3", *extra],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"bootstrap servers: 127.0.0.1:{port}"
        topics = proc.stdout.readline()
        assert "bandit.contexts (3)" in topics and "bandit.rewards (3)" in topics
        what = proc.stdout.readline()
        assert what.startswith("broker: Apache Kafka 4." if kafka else "broker: embedded Tansu")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
        with pytest.raises(OSError):  # every node stopped with it
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_run_command_decides_learns_and_exits_cleanly(bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]
    env = _env(
        RL_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        RL_KAFKA_GROUP_ID=f"cli-{tag}",
        RL_TOPIC_CONTEXTS=f"cli-{tag}.contexts",
        RL_TOPIC_REWARDS=f"cli-{tag}.rewards",
        RL_TOPIC_DECISIONS=f"cli-{tag}.decisions",
        RL_TOPIC_METRICS=f"cli-{tag}.metrics",
        RL_TOPIC_DEAD_LETTER=f"cli-{tag}.dlq",
        RL_TOPIC_STATE=f"cli-{tag}.state",
        RL_KAFKA_SESSION_TIMEOUT_MS="2000",
        RL_KAFKA_HEARTBEAT_INTERVAL_MS="500",
        RL_KAFKA_FETCH_WAIT_MAX_MS="10",
        RL_UPDATE_INTERVAL="1",
        RL_LOG_FORMAT="json",
        RL_LOG_LEVEL="DEBUG",
        RL_KAFKA_SASL_PASSWORD=SECRET,  # unused on PLAINTEXT, but must never be logged
        RL_STATE_DIR=str(tmp_path / "state"),
    )
    log_path = tmp_path / "service.log"  # a file, not a pipe: DEBUG output must not block it
    log_file = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([BIN, "run"], env=env, stderr=log_file)
    try:
        producer = Producer({"bootstrap.servers": bootstrap})
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{tag}",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
            }
        )
        # `run` creates its topics at start; read every decisions partition from the start.
        deadline = time.monotonic() + 30
        parts: list[int] = []
        while not parts and time.monotonic() < deadline:
            md = consumer.list_topics(timeout=5).topics.get(f"cli-{tag}.decisions")
            parts = list(md.partitions) if md and md.error is None else []
            time.sleep(0.1)
        assert parts, "run did not create its topics"
        consumer.assign([TopicPartition(f"cli-{tag}.decisions", p, 0) for p in parts])
        for i in range(20):
            doc = {
                "event_id": f"e{i}",
                "domain": "shop",
                "context": {"n": i},
                "candidates": ["x", "y"],
            }
            producer.produce(f"cli-{tag}.contexts", orjson.dumps(doc), b"shop")
        producer.flush(10)
        got: dict[str, dict] = {}
        deadline = time.monotonic() + 60
        while len(got) < 20 and time.monotonic() < deadline:
            for m in consumer.consume(100, 0.2):
                if m.error() is None:
                    d = orjson.loads(m.value())
                    got[d["event_id"]] = d
        assert len(got) == 20
        for i in range(20):
            producer.produce(
                f"cli-{tag}.rewards",
                orjson.dumps({"event_id": f"e{i}", "domain": "shop", "reward": 1.0}),
                b"shop",
            )
        producer.flush(10)
        time.sleep(2.0)
        producer.produce(
            f"cli-{tag}.contexts",
            orjson.dumps(
                {"event_id": "later", "domain": "shop", "context": {}, "candidates": ["x", "y"]}
            ),
            b"shop",
        )
        producer.flush(10)
        later = None
        deadline = time.monotonic() + 30
        while later is None and time.monotonic() < deadline:
            for m in consumer.consume(100, 0.2):
                if m.error() is None and orjson.loads(m.value())["event_id"] == "later":
                    later = orjson.loads(m.value())
        assert later is not None and later["policy_version"] == 20  # the policy learned
        consumer.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log_file.close()
        log = log_path.read_text()
        assert "stopped after 21 decisions, 20 rewards joined" in log
        assert SECRET not in log
    finally:
        if proc.poll() is None:
            proc.kill()


def test_run_command_rejects_bad_settings_naming_the_variable():
    proc = subprocess.run(
        [BIN, "run"], env=_env(RL_BATCH_SIZE="many"), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "RL_BATCH_SIZE" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"ENABLE_RL_SHADOW_EVAL": "true", "RL_SHADOW_POLICIES": "bogus"},
            "bandit-stream: RL_SHADOW_POLICIES: unknown policy 'bogus'; known: ",
        ),
        ({"RL_SHADOW_POLICIES": "bogus"}, "RL_SHADOW_POLICIES: unknown policy 'bogus'"),
        ({"RL_POLICY": "bogus"}, "RL_POLICY: unknown policy 'bogus'"),
        ({"RL_KAFKA_EXTRA": "not json"}, "RL_KAFKA_EXTRA: not a JSON object"),
        ({"RL_KAFKA_EXTRA": '{"no.such.property": 1}'}, "RL_KAFKA_EXTRA: No such configuration"),
        ({"RL_FAILPOINTS": "decode:2"}, "RL_FAILPOINTS: 'decode:2': probability must lie in"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable_and_exit_2(env, expected):
    proc = subprocess.run([BIN, "run"], env=_env(**env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert expected in proc.stderr


def test_choices_ignore_case_and_a_typo_gets_the_closest_name(bootstrap, tmp_path):
    env = _env(
        RL_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        RL_LOG_LEVEL="info",
        RL_KAFKA_SECURITY_PROTOCOL="plaintext",
        RL_POLCY="linucb",
        ENABLE_RL_ADVANCE="true",
        RL_STATE_DIR=str(tmp_path),
    )
    proc = subprocess.run(
        [BIN, "checkpoint", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and "no checkpoints in" in proc.stderr, proc.stderr  # none yet
    assert "RL_POLCY is not a bandit-stream setting; did you mean RL_POLICY?" in proc.stderr
    assert "ENABLE_RL_ADVANCE is not a bandit-stream setting; did you mean ENABLE_RL_ADVANCED?" in (
        proc.stderr
    )


def test_simulate_sends_its_traffic(settings_factory, start_service):
    """`bandit-stream simulate` (the compose file's traffic) against a running service."""
    from stream.bench.harness import service_env, topic_reader

    s = settings_factory()
    start_service(s)
    proc = subprocess.run(
        [BIN, "simulate", "--events", "100", "--rate", "100"],
        env=service_env(s),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    done = [orjson.loads(line) for line in proc.stdout.splitlines() if '"done"' in line]
    assert done and done[-1]["produced"] == 100 and done[-1]["rewards_sent"] == 100
    counts = {}
    for topic in (s.topic_contexts, s.topic_rewards, s.topic_decisions):
        # Read, not watermarks: the embedded broker's watermarks may lag what it serves.
        reader = topic_reader(s.kafka_bootstrap_servers, topic, f"count-{topic}", 10)
        ids: set[str] = set()
        deadline = time.monotonic() + 20
        while len(ids) < 100 and time.monotonic() < deadline:
            ids.update(
                orjson.loads(m.value())["event_id"]
                for m in reader.consume(500, 0.2)
                if m.error() is None
            )
        reader.close()
        counts[topic] = len(ids)
    assert set(counts.values()) == {100}, counts
