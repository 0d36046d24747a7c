"""Injected faults at every failpoint, the service restarted whenever it exits, while
contexts and rewards stream: nothing lost, nothing learned twice, and every copy of a
decision alike (a replay serves the decision already published)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.bench.harness import service_env
from stream.config import Settings
from stream.failpoints import POINTS
from stream.state.store import CheckpointStore

pytestmark = pytest.mark.integration

BIN = str(Path(sys.executable).with_name("bandit-stream"))
DOMAINS = ("dom0", "dom1", "dom2")
# Chosen so each point fires within a few seconds of traffic at ~80 contexts/s.
PROBABILITY = {
    "decode": 0.01,
    "decide": 0.05,
    "emit": 0.02,
    "join": 0.02,
    "learn": 0.1,
    "checkpoint_write": 0.3,
    "state_publish": 0.3,
    "commit": 0.3,
    "revoke": 1.0,  # passed only when partitions go: at a SIGTERM's close
}
INJECTED = re.compile(r"failpoint '(\w+)' injected a fault")


class App:
    """The application around the service: streams contexts, rewards each distinct
    decision once (action "a" pays), and remembers every decision and dead letter."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.stop = threading.Event()
        self.sent: list[str] = []
        self.actions: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self.rewarded: set[str] = set()
        # (code, source topic, doc, the failpoint named by exception_message or "")
        self.dead: list[tuple[str, str, dict[str, Any], str]] = []
        self._threads = [
            threading.Thread(target=self._contexts, daemon=True),
            threading.Thread(target=self._decisions, daemon=True),
            threading.Thread(target=self._dead_letters, daemon=True),
        ]
        self.producing = threading.Event()
        self.producing.set()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _reader(self, topic: str) -> Consumer:
        c = Consumer(
            {
                "bootstrap.servers": self.s.kafka_bootstrap_servers,
                "group.id": f"app-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, q, 0) for q in parts])
        return c

    def _contexts(self) -> None:
        p = Producer({"bootstrap.servers": self.s.kafka_bootstrap_servers, "linger.ms": 5})
        i = 0
        while not self.stop.is_set():
            if not self.producing.is_set():
                time.sleep(0.05)
                continue
            dom = DOMAINS[i % len(DOMAINS)]
            eid = f"c{i}"
            doc = {"event_id": eid, "domain": dom, "context": {"x": (i % 7) / 7}}
            doc["candidates"] = ["a", "b", "c"]
            p.produce(self.s.topic_contexts, orjson.dumps(doc), dom.encode())
            self.sent.append(eid)
            p.poll(0)
            i += 1
            time.sleep(0.0125)
        p.flush(10)

    def _decisions(self) -> None:
        p = Producer({"bootstrap.servers": self.s.kafka_bootstrap_servers, "linger.ms": 5})
        c = self._reader(self.s.topic_decisions)
        while not self.stop.is_set():
            for m in c.consume(500, 0.1):
                if m.error():
                    continue
                d = orjson.loads(m.value())
                eid = d["event_id"]
                self.actions[eid].append((d["action"], d["probability"]))
                if eid not in self.rewarded:
                    self.rewarded.add(eid)
                    doc = {
                        "event_id": eid,
                        "domain": d["domain"],
                        "reward": float(d["action"] == "a"),
                    }
                    p.produce(self.s.topic_rewards, orjson.dumps(doc), d["domain"].encode())
            p.poll(0)
        p.flush(10)
        c.close()

    def _dead_letters(self) -> None:
        c = self._reader(self.s.topic_dead_letter)
        while not self.stop.is_set():
            for m in c.consume(500, 0.1):
                if m.error():
                    continue
                h = {k: v.decode() for k, v in m.headers() or []}
                point = INJECTED.search(h.get("exception_message", ""))
                self.dead.append(
                    (
                        h["error_code"],
                        h["source_topic"],
                        orjson.loads(m.value()),
                        point.group(1) if point else "",
                    )
                )
        c.close()


def _injected(log: Path) -> Counter[str]:
    """Faults injected, by point: one log line each (its traceback repeats the name)."""
    if not log.exists():
        return Counter()
    return Counter(
        m.group(1) for line in log.read_text().splitlines() if (m := INJECTED.search(line))
    )


def _env(s: Settings, **extra: str) -> dict[str, str]:
    env = service_env(s)
    env.update(extra)
    return env


def _run(env: dict[str, str], log: Path, until: float, term_after: float | None = None) -> int:
    """One life of the service: until it exits by itself, or SIGTERM after ``term_after``
    seconds (or at ``until``)."""
    with open(log, "a") as out:
        proc = subprocess.Popen([BIN, "run"], env=env, stderr=out)
        started = time.monotonic()
        stop_at = until if term_after is None else min(until, started + term_after)
        while proc.poll() is None and time.monotonic() < stop_at:
            time.sleep(0.1)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"the service did not stop within 60 s: {log}") from None


def _learned(s: Settings) -> dict[str, int]:
    snap = CheckpointStore(Path(s.state_dir) / "checkpoints.sqlite").latest()
    assert snap is not None
    return {d: roles["served"][0]["n_learned"] for d, roles in snap.domains.items()}


def _finish(s: Settings, app: App, log: Path) -> None:
    """Contexts stop; one last clean run decides and learns everything."""
    app.producing.clear()
    time.sleep(0.2)
    with open(log, "a") as out:
        proc = subprocess.Popen([BIN, "run"], env=_env(s), stderr=out)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _settled(app):
            time.sleep(0.2)
        time.sleep(3.0)  # the last rewards reach the service and are learned
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]


def _settled(app: App) -> bool:
    dead_contexts = {d["event_id"] for code, _t, d, _p in app.dead if code == "internal_error"}
    return all(e in app.actions or e in dead_contexts for e in list(app.sent))


def _traffic(settings_factory: Any, tmp_path: Path) -> tuple[Settings, App, Path]:
    """Fresh topics, the application streaming, and the service log's path."""
    s = settings_factory(
        checkpoint_interval_s=0.5, update_interval=5, reward_wait_s=600.0, topic_partitions=2
    )
    app = App(s)
    app.start()
    return s, app, tmp_path / "service.log"


def test_no_input_is_lost_or_learned_twice_whatever_fails(settings_factory, tmp_path):
    s, app, log = _traffic(settings_factory, tmp_path)
    hits: Counter[str] = Counter()
    exits: Counter[int] = Counter()
    try:
        for point in POINTS:
            for attempt in range(3):  # a point that never fired in a life gets another
                before = sum(_injected(log).values())
                seed = str(POINTS.index(point) * 10 + attempt)
                env = _env(s, RL_FAILPOINTS=f"{point}:{PROBABILITY[point]}", RL_FAILPOINT_SEED=seed)
                term_after = 4.0 if point == "revoke" else None
                exits[_run(env, log, time.monotonic() + 7, term_after)] += 1
                if sum(_injected(log).values()) > before:
                    break
        hits.update(_injected(log))
        _finish(s, app, log)
    finally:
        app.close()
    print(f"failpoints fired: {dict(hits)}; exit codes: {dict(exits)}")
    assert set(hits) == set(POINTS), f"never fired: {set(POINTS) - set(hits)}"
    assert sum(exits[c] for c in exits if c != 0) >= 7, exits  # most lives ended in a failure
    # Every context decided; every copy of its decision has the same action and probability.
    assert not app.dead, app.dead[:5]
    missing = [e for e in app.sent if e not in app.actions]
    assert not missing, f"{len(missing)} of {len(app.sent)} contexts never decided"
    changed = {e: a for e, a in app.actions.items() if len(set(a)) > 1}
    assert not changed, changed
    copies = sum(len(a) - 1 for a in app.actions.values())
    print(f"{len(app.sent)} contexts, {copies} decisions published more than once")
    # Each distinct reward learned exactly once: the policies' versions count them.
    assert sum(_learned(s).values()) == len(app.rewarded)


def test_dead_letter_mode_sends_each_failing_message_aside_and_goes_on(settings_factory, tmp_path):
    s, app, log = _traffic(settings_factory, tmp_path)
    per_message = ("decode", "decide", "emit", "join", "learn")
    spec = ",".join(f"{p}:{PROBABILITY[p] / 2}" for p in per_message)
    exits: list[int] = []
    try:
        for life in range(3):  # clean restarts between lives: nothing is replayed
            env = _env(
                s,
                RL_ON_PROCESSING_ERROR="dead_letter",
                RL_MAX_PROCESSING_ERRORS="1000",
                RL_FAILPOINTS=spec,
                RL_FAILPOINT_SEED=str(life),
            )
            exits.append(_run(env, log, time.monotonic() + 8))
        _finish(s, app, log)
    finally:
        app.close()
    hits = Counter(point for _c, _t, _d, point in app.dead if point)
    print(f"dead letters by failpoint: {dict(hits)}")
    hits.update(_injected(log))  # a batch's decide that raised is logged, then retried
    assert exits == [0, 0, 0], log.read_text()[-3000:]  # the service went on every time
    assert set(hits) == set(per_message)
    assert {code for code, _t, _d, _p in app.dead} == {"internal_error"}
    dead_contexts = {d["event_id"] for _c, t, d, _p in app.dead if t == s.topic_contexts}
    dead_rewards = {d["event_id"] for _c, t, d, _p in app.dead if t == s.topic_rewards}
    assert dead_contexts and dead_rewards
    # Every context decided or dead-lettered, never both; each once.
    decided = set(app.actions)
    assert decided | dead_contexts == set(app.sent)
    assert not decided & dead_contexts
    assert all(len(a) == 1 for a in app.actions.values())
    # Every reward learned once unless it was dead-lettered.
    assert dead_rewards <= app.rewarded
    assert sum(_learned(s).values()) == len(app.rewarded) - len(dead_rewards)
