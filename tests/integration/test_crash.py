"""kill -9 the service ten times while contexts and rewards stream: nothing lost, nothing twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.bench.harness import service_env
from stream.state.store import CheckpointStore

pytestmark = pytest.mark.integration

BIN = os.path.join(os.path.dirname(sys.executable), "bandit-stream")
N_CONTEXTS = 1200


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([BIN, "run"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:  # wait until it owns its partitions
        line = proc.stderr.readline()
        if not line:
            break
        if '"assigned ' in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain
            return proc
    proc.kill()
    raise AssertionError("the service never got its partitions")


def test_kill_nine_ten_times_loses_no_reward_and_learns_none_twice(settings_factory):
    settings = settings_factory(topic_partitions=2)
    bootstrap = settings.kafka_bootstrap_servers
    stop = threading.Event()
    decided: set[str] = set()
    rewarded: set[str] = set()

    def produce_contexts() -> None:
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        for i in range(N_CONTEXTS):
            dom = f"dom{i % 3}"
            doc = {
                "event_id": f"c{i}",
                "domain": dom,
                "context": {"x": (i % 7) / 7},
                "candidates": ["a", "b", "c"],
            }
            p.produce(settings.topic_contexts, orjson.dumps(doc), dom.encode())
            p.poll(0)
            time.sleep(0.012)
            if stop.is_set():
                break
        p.flush(10)

    def reward_decisions() -> None:
        # The application: one reward per distinct decided event, never two.
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"app-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        md = c.list_topics(settings.topic_decisions, timeout=10)
        c.assign(
            [
                TopicPartition(settings.topic_decisions, q, 0)
                for q in md.topics[settings.topic_decisions].partitions
            ]
        )
        while not stop.is_set():
            for m in c.consume(500, 0.1):
                if m.error():
                    continue
                d = orjson.loads(m.value())
                decided.add(d["event_id"])
                if d["event_id"] not in rewarded:
                    rewarded.add(d["event_id"])
                    doc = {
                        "event_id": d["event_id"],
                        "domain": d["domain"],
                        "reward": float(d["action"] == "b"),
                    }
                    p.produce(settings.topic_rewards, orjson.dumps(doc), d["domain"].encode())
            p.poll(0)
        p.flush(10)
        c.close()

    threads = [threading.Thread(target=produce_contexts), threading.Thread(target=reward_decisions)]
    for t in threads:
        t.start()
    env = service_env(
        settings.model_copy(
            update={"checkpoint_interval_s": 0.7, "update_interval": 5, "log_level": "INFO"}
        )
    )
    rng = random.Random(7)
    try:
        for _ in range(10):
            proc = start(env)
            time.sleep(rng.uniform(0.3, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        final = start(env)
        deadline = time.monotonic() + 120
        while len(decided) < N_CONTEXTS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(decided) == N_CONTEXTS, f"{N_CONTEXTS - len(decided)} contexts never decided"
        time.sleep(4.0)  # the last rewards reach the service
        final.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    store = CheckpointStore(settings.state_dir / "checkpoints.sqlite")
    snap = store.latest()
    assert snap is not None
    learned = sum(roles["served"][0]["n_learned"] for roles in snap.domains.values())
    assert len(rewarded) == N_CONTEXTS
    assert learned == len(rewarded)  # every distinct reward learned exactly once
