"""The checkpointer and the rebalance handlers with fakes for Kafka: what is (not)
committed and what is released when a step fails."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from policies.features import FeatureHasher
from stream.config import Settings, load_settings
from stream.domains import Domains
from stream.join import PendingJoins
from stream.kafka.balance import TopicBalance
from stream.state.checkpointer import Checkpointer, Clients, Skipped, Started, Written
from stream.state.delta import Chain
from stream.state.ownership import Ownership
from stream.state.rebalance import Rebalance
from stream.state.store import CheckpointStore

CTX, REW = "bandit.contexts", "bandit.rewards"


class FakeConsumer:
    def __init__(self, positions: dict[tuple[str, int], int] | None = None) -> None:
        self.positions = positions if positions is not None else {(CTX, 0): 7, (REW, 0): 3}
        self.position_error: KafkaException | None = None
        self.committed: list[list[tuple[str, int, int]]] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        if self.position_error is not None:
            raise self.position_error
        return [
            TopicPartition(tp.topic, tp.partition, self.positions[tp.topic, tp.partition])
            for tp in tps
        ]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.committed.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])


class FakeDelivery:
    def __init__(self, unacknowledged: int = 0) -> None:
        self.unacknowledged = unacknowledged

    def flush(self, timeout_s: float, stop_by: Any) -> int:
        return self.unacknowledged


class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[Any] = []

    def publish(
        self, snap: Any, records: Any, markers: Any, timeout: float, *rest: Any
    ) -> dict[str, Chain]:
        if self.fail:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        self.published.append(markers)
        return {d: Chain("base", 0, 1, 0, {}) for d in records}

    def close(self, timeout_s: float) -> None:
        pass

    def purge(self) -> None:
        pass


class FailingStore(CheckpointStore):
    def write(self, snap: Any) -> int:
        raise sqlite3.OperationalError("disk I/O error")


@pytest.fixture
def settings(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return load_settings(state_dir=tmp_path, topic_contexts=CTX, topic_rewards=REW)


def _parts(
    settings: Settings, store: CheckpointStore | None = None
) -> tuple[Checkpointer, Ownership]:
    hasher = FeatureHasher(settings.feature_dim, seed=settings.seed)
    domains = Domains(settings, hasher, None, lambda *a: None)
    joins = PendingJoins(settings.max_pending, settings.reward_wait_s)
    store = store or CheckpointStore(settings.state_dir / "checkpoints.sqlite")
    own = Ownership(settings, domains, joins, hasher, store)
    own.held = {0}  # as an assignment leaves it, without restoring through Kafka
    assert domains.get_or_create("d", 0) is not None
    return Checkpointer(own, None, lambda n: None), own


def _attach(
    ck: Checkpointer, consumer: FakeConsumer, delivery: FakeDelivery, publisher: FakePublisher
) -> None:
    ck.clients = Clients(consumer, delivery, publisher)  # type: ignore[arg-type]


def _checkpoint(ck: Checkpointer, wait: bool = True) -> Any:
    return ck.checkpoint(wait, 1.0, lambda: float("inf"))


def test_a_full_checkpoint_writes_then_commits_what_it_wrote(settings):
    ck, own = _parts(settings)
    consumer, publisher = FakeConsumer(), FakePublisher()
    _attach(ck, consumer, FakeDelivery(), publisher)
    out = _checkpoint(ck)
    assert isinstance(out, Written) and ck.store.versions()[0].version == out.version
    assert consumer.committed == [[(CTX, 0, 7), (REW, 0, 3)]]
    assert publisher.published and ck.written == 1 and "d" in own.published
    assert own.chains["d"].base == "base"  # the next record of "d" may be a delta


def test_a_periodic_checkpoint_commits_only_once_its_write_is_finished(settings):
    ck, _ = _parts(settings)
    consumer = FakeConsumer()
    _attach(ck, consumer, FakeDelivery(), FakePublisher())
    assert isinstance(_checkpoint(ck, wait=False), Started)
    ck.writing.future.result(5)  # type: ignore[union-attr]
    assert consumer.committed == []  # not until the loop finishes it
    assert isinstance(ck.finish(block=False), Written)
    assert consumer.committed == [[(CTX, 0, 7), (REW, 0, 3)]]


def test_decisions_left_in_the_producer_skip_the_checkpoint(settings):
    ck, _ = _parts(settings)
    consumer = FakeConsumer()
    _attach(ck, consumer, FakeDelivery(unacknowledged=3), FakePublisher())
    out = _checkpoint(ck)
    assert out == Skipped("3 decisions unacknowledged")
    assert consumer.committed == [] and ck.store.versions() == [] and ck.writing is None


def test_positions_that_raise_skip_the_checkpoint(settings):
    ck, _ = _parts(settings)
    consumer = FakeConsumer()
    consumer.position_error = KafkaException(KafkaError(KafkaError._TRANSPORT))
    _attach(ck, consumer, FakeDelivery(), FakePublisher())
    assert isinstance(_checkpoint(ck), Skipped)
    assert consumer.committed == [] and ck.store.versions() == []


def test_a_failing_sqlite_write_commits_nothing_and_counts(settings):
    ck, own = _parts(settings, FailingStore(settings.state_dir / "checkpoints.sqlite"))
    consumer = FakeConsumer()
    _attach(ck, consumer, FakeDelivery(), FakePublisher())
    for n in (1, 2, 3):
        out = _checkpoint(ck)
        assert isinstance(out, Skipped) and "disk I/O error" in out.reason
        assert ck.failures == n
    assert consumer.committed == [] and ck.failing and own.published == {}


def test_a_failing_state_topic_publish_keeps_the_local_checkpoint_and_its_commit(settings):
    ck, own = _parts(settings)
    consumer, publisher = FakeConsumer(), FakePublisher()
    _attach(ck, consumer, FakeDelivery(), publisher)
    assert isinstance(_checkpoint(ck), Written) and "d" in own.chains
    own.published.clear()  # "d" changed since
    publisher.fail = True
    assert isinstance(_checkpoint(ck), Written)
    assert consumer.committed[-1] == [(CTX, 0, 7), (REW, 0, 3)]  # SQLite is authoritative
    assert own.published == {}  # republished at the next checkpoint
    assert own.chains == {}  # as a new base: what reached the topic is unknown


def _rebalance(
    settings: Settings, own: Ownership, outcome: Any
) -> tuple[Rebalance, threading.Event]:
    ready = threading.Event()
    ready.set()
    balance = TopicBalance(CTX, REW, settings.max_pending)
    return Rebalance(settings, own, balance, lambda: outcome, ready, None), ready


def test_a_revoke_whose_checkpoint_fails_releases_every_partition(settings):
    _, own = _parts(settings)
    rb, ready = _rebalance(settings, own, Skipped("write failed"))
    rb.on_revoke(FakeConsumer(), [TopicPartition(CTX, 0)])  # type: ignore[arg-type]
    assert not ready.is_set() and own.held == set() and "d" not in own.domains.states


def test_a_revoke_whose_checkpoint_is_written_keeps_the_state_until_the_next_assignment(settings):
    _, own = _parts(settings)
    rb, _ = _rebalance(settings, own, Written(1))
    rb.on_revoke(FakeConsumer(), [TopicPartition(CTX, 0)])  # type: ignore[arg-type]
    assert own.held == {0} and "d" in own.domains.states


def test_after_a_failure_a_revoke_checkpoints_nothing(settings):
    _, own = _parts(settings)
    calls: list[int] = []
    rb, _ = _rebalance(settings, own, Skipped("x"))
    rb.checkpoint = lambda: calls.append(1) or Written(1)  # type: ignore[assignment,func-returns-value]
    rb.failed = True
    rb.on_revoke(FakeConsumer(), [TopicPartition(CTX, 0)])  # type: ignore[arg-type]
    assert calls == [] and own.held == {0}


def test_lost_partitions_are_dropped_without_a_checkpoint(settings):
    _, own = _parts(settings)
    calls: list[int] = []
    rb, ready = _rebalance(settings, own, Written(1))
    rb.checkpoint = lambda: calls.append(1) or Written(1)  # type: ignore[assignment,func-returns-value]
    rb.on_lost(FakeConsumer(), [TopicPartition(CTX, 0)])  # type: ignore[arg-type]
    assert calls == [] and not ready.is_set() and own.held == set()
    assert "d" not in own.domains.states
