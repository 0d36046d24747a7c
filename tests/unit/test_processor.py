"""The Kafka processor (stream/processor.py) on fetched batches, with fakes for Kafka: what
reaches the decisions topic, the dead-letter topic and the joined log for what the core
decided. Wired as the service wires it, without a broker."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
import pytest
from confluent_kafka import KafkaError

from policies.features import FeatureHasher
from stream.config import Settings, load_settings
from stream.core.engine import Engine
from stream.joinedlog import JoinedLog
from stream.kafka.balance import TopicBalance
from stream.kafka.codec import Decision
from stream.kafka.decisionlog import DecisionLog, context_of
from stream.observe.metrics import Metrics
from stream.observe.stats import Stats
from stream.observe.tally import Tally
from stream.processor import BatchProcessor
from stream.state.ownership import Ownership
from stream.state.store import CheckpointStore
from tests.fakes import FakeMessage, FakeProducer

JOINED = "bandit.joined"
NOW = time.time()


@dataclass
class Rig:
    """A processor producing through ``producer``, as ``Service.run`` attaches it."""

    settings: Settings
    processor: BatchProcessor
    producer: FakeProducer

    @property
    def stats(self) -> Stats:
        return self.processor.tally.stats

    def turn(self, *msgs: FakeMessage) -> None:
        self.processor.handle(list(msgs), NOW, time.perf_counter())

    def sent(self, topic: str) -> list[FakeMessage]:
        """What reached ``topic`` (records produced since the turn's poll delivered too)."""
        self.producer.poll()
        return [m for m in self.producer.delivered if m.topic() == topic]


@contextlib.contextmanager
def wired(tmp_path: Any, producer: FakeProducer) -> Iterator[Rig]:
    """The processor with the collaborators ``Service`` gives it, and a joined log on a
    topic (through the same delivery, as ``RL_JOINED_LOG=kafka:TOPIC`` has it)."""
    s = load_settings(state_dir=tmp_path, joined_log=f"kafka:{JOINED}")
    hasher = FeatureHasher(s.feature_dim, seed=s.seed)
    engine = Engine(s, hasher)
    store = CheckpointStore(s.state_dir / "checkpoints.sqlite")
    ownership = Ownership(s, engine.domains, engine.joins, hasher, store, None, DecisionLog(s))
    balance = TopicBalance(s.topic_contexts, s.topic_rewards, s.max_pending, s.batch_size)
    processor = BatchProcessor(s, engine, ownership, balance, Tally(Stats(), Metrics(s)), None)
    delivery = processor.attach(producer)  # type: ignore[arg-type]
    processor.joined_log = JoinedLog(s.joined_log, s.feature_dim, delivery)
    engine.keep_distribution = True
    try:
        yield Rig(s, processor, producer)
    finally:
        processor.joined_log.close()
        store.close()


@pytest.fixture
def rig(tmp_path: Any) -> Iterator[Rig]:
    with wired(tmp_path, FakeProducer()) as r:
        yield r


def context(s: Settings, eid: str, offset: int, at: float = NOW) -> FakeMessage:
    doc = {"event_id": eid, "domain": "d", "context": {"x": 1.0}, "candidates": ["a", "b", "c"]}
    return _record(s.topic_contexts, orjson.dumps(doc), offset, at)


def reward(s: Settings, eid: str, offset: int, value: float, at: float = NOW) -> FakeMessage:
    doc = {"event_id": eid, "domain": "d", "reward": value}
    return _record(s.topic_rewards, orjson.dumps(doc), offset, at)


def _record(topic: str, value: bytes, offset: int, at: float) -> FakeMessage:
    return FakeMessage(topic, value, b"d", partition=0, offset=offset, timestamp_ms=int(at * 1000))


def headers(m: FakeMessage) -> dict[str, Any]:
    return dict(m.headers() or [])


def test_a_valid_context_is_published_as_one_decision_as_the_engine_decided(rig):
    s = rig.settings
    rig.turn(context(s, "e1", offset=5))
    (msg,) = rig.sent(s.topic_decisions)
    d = msgspec.json.decode(msg.value() or b"", type=Decision)
    (pending,) = rig.processor.engine.joins.items()  # what the engine decided, awaiting its reward
    assert (d.event_id, d.domain, msg.key()) == ("e1", "d", b"d")
    assert d.action == pending.encoded.candidates[pending.chosen]
    assert d.probability == pending.probability == d.probabilities[d.action]
    assert (d.policy, d.variant) == (pending.policy, pending.variant)
    assert context_of(msg.headers()) == (0, 5)  # names the context it answers
    assert rig.sent(s.topic_dead_letter) == [] and rig.stats.decisions == 1


def test_a_malformed_context_is_dead_lettered_with_its_reason(rig):
    s = rig.settings
    bad = _record(s.topic_contexts, b'{"event_id": "e1", ', 3, NOW)
    rig.turn(bad, context(s, "e2", offset=4))
    (dead,) = rig.sent(s.topic_dead_letter)
    h = headers(dead)
    assert h["error_code"] == b"invalid_json" and b"not valid JSON" in h["error_reason"]
    assert (h["source_topic"], h["source_partition"], h["source_offset"]) == (
        s.topic_contexts.encode(),
        b"0",
        b"3",
    )
    assert (dead.value(), dead.key()) == (bad.value(), bad.key())  # the original, unchanged
    (decision,) = rig.sent(s.topic_decisions)  # the valid one of the batch is decided
    assert orjson.loads(decision.value() or b"")["event_id"] == "e2"
    assert rig.processor.tally.metrics.rejected_by_code() == {"invalid_json": 1}


def test_a_reward_joins_its_decision_once_and_a_second_is_a_duplicate(rig):
    s = rig.settings
    rig.turn(context(s, "e1", offset=0))
    (decision,) = rig.sent(s.topic_decisions)
    action = orjson.loads(decision.value() or b"")["action"]
    rig.turn(reward(s, "e1", offset=0, value=1.0))
    (line,) = rig.sent(JOINED)
    joined = orjson.loads(line.value() or b"")
    assert (joined["event_id"], joined["action"], joined["reward"]) == ("e1", action, 1.0)
    assert joined["default_reward"] is False and line.key() == b"d"
    assert rig.stats.rewards_joined == 1 and len(rig.processor.engine.joins) == 0
    assert rig.sent(s.topic_dead_letter) == []

    rig.turn(reward(s, "e1", offset=1, value=0.0))
    (dead,) = rig.sent(s.topic_dead_letter)
    assert headers(dead)["error_code"] == b"duplicate_reward"
    assert headers(dead)["source_offset"] == b"1"
    assert len(rig.sent(JOINED)) == 1 and rig.stats.duplicate_rewards == 1


def test_a_reward_for_an_unknown_event_is_refused_once_its_context_cannot_come(rig):
    s = rig.settings
    start = NOW - 120.0
    rig.turn(reward(s, "ghost", offset=7, value=1.0, at=start))
    assert rig.stats.early_rewards == 1  # held: its context may be yet to come
    assert rig.sent(s.topic_dead_letter) == []
    # The contexts partition read past the early wait (and its grace): it cannot come now.
    late = start + s.reward_early_wait_s + s.reward_grace_s + 1.0
    rig.turn(context(s, "other", offset=0, at=late))
    (dead,) = rig.sent(s.topic_dead_letter)
    h = headers(dead)
    assert h["error_code"] == b"unknown_event" and b"ghost" in h["error_reason"]
    assert (h["source_topic"], h["source_offset"]) == (s.topic_rewards.encode(), b"7")
    assert orjson.loads(dead.value() or b"") == {"event_id": "ghost", "domain": "d", "reward": 1.0}
    assert rig.stats.unknown_rewards == 1 and rig.stats.rewards_joined == 0
    assert rig.sent(JOINED) == []


def test_a_decision_the_topic_refuses_dead_letters_its_context_as_undeliverable(tmp_path):
    def fate(m: FakeMessage) -> KafkaError | None:
        too_large = m.topic() == "bandit.decisions"
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if too_large else None

    with wired(tmp_path, FakeProducer(fate)) as rig:
        s = rig.settings
        assert s.topic_decisions == "bandit.decisions"
        ctx = context(s, "e1", offset=2)
        rig.turn(ctx)
        assert rig.sent(s.topic_decisions) == []
        (dead,) = rig.sent(s.topic_dead_letter)
        assert headers(dead)["error_code"] == b"undeliverable"
        assert dead.value() == ctx.value()
        assert len(rig.processor.engine.joins) == 0  # no reward can come for it
