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
from stream.core.domains import Domains
from stream.core.join import PendingJoins
from stream.kafka.balance import TopicBalance
from stream.state.checkpointer import Checkpointer, Clients, Skipped, Started, Written
from stream.state.ownership import Ownership
from stream.state.rebalance import Rebalance
from stream.state.store import CheckpointStore
from tests.fakes import FakeConsumer, FakeDelivery, FakePublisher

CTX, REW = "bandit.contexts", "bandit.rewards"
POSITIONS = {(CTX, 0): 7, (REW, 0): 3}


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
    consumer, publisher = FakeConsumer(POSITIONS), FakePublisher()
    _attach(ck, consumer, FakeDelivery(), publisher)
    out = _checkpoint(ck)
    assert isinstance(out, Written) and ck.store.versions()[0].version == out.version
    assert consumer.committed == [[(CTX, 0, 7), (REW, 0, 3)]]
    assert publisher.published and ck.written == 1 and "d" in own.published
    assert own.chains["d"].base == "base"  # the next record of "d" may be a delta
    assert publisher.paced == [False]  # revoke and shutdown publish at once


def test_a_periodic_checkpoint_commits_only_once_its_write_is_finished(settings):
    ck, _ = _parts(settings)
    consumer, publisher = FakeConsumer(POSITIONS), FakePublisher()
    _attach(ck, consumer, FakeDelivery(), publisher)
    assert isinstance(_checkpoint(ck, wait=False), Started)
    ck.writing.future.result(5)  # type: ignore[union-attr]
    assert publisher.paced == [True]  # beside the loop's decisions: paced
    assert consumer.committed == []  # not until the loop finishes it
    assert isinstance(ck.finish(block=False), Written)
    assert consumer.committed == [[(CTX, 0, 7), (REW, 0, 3)]]


def test_decisions_left_in_the_producer_skip_the_checkpoint(settings):
    ck, _ = _parts(settings)
    consumer = FakeConsumer(POSITIONS)
    _attach(ck, consumer, FakeDelivery(unacknowledged=3), FakePublisher())
    out = _checkpoint(ck)
    assert out == Skipped("3 decisions unacknowledged")
    assert consumer.committed == [] and ck.store.versions() == [] and ck.writing is None


def test_positions_that_raise_skip_the_checkpoint(settings):
    ck, _ = _parts(settings)
    consumer = FakeConsumer(POSITIONS)
    consumer.position_error = KafkaException(KafkaError(KafkaError._TRANSPORT))
    _attach(ck, consumer, FakeDelivery(), FakePublisher())
    assert isinstance(_checkpoint(ck), Skipped)
    assert consumer.committed == [] and ck.store.versions() == []


def test_a_failing_sqlite_write_commits_nothing_and_counts(settings):
    ck, own = _parts(settings, FailingStore(settings.state_dir / "checkpoints.sqlite"))
    consumer = FakeConsumer(POSITIONS)
    _attach(ck, consumer, FakeDelivery(), FakePublisher())
    for n in (1, 2, 3):
        out = _checkpoint(ck)
        assert isinstance(out, Skipped) and "disk I/O error" in out.reason
        assert ck.failures == n
    assert consumer.committed == [] and ck.failing and own.published == {}


def test_a_failing_state_topic_publish_keeps_the_local_checkpoint_and_its_commit(settings):
    ck, own = _parts(settings)
    consumer, publisher = FakeConsumer(POSITIONS), FakePublisher()
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


def test_a_write_in_flight_when_the_partitions_are_lost_publishes_and_commits_nothing(settings):
    ck, own = _parts(settings)
    go = threading.Event()
    consumer, publisher = FakeConsumer(POSITIONS), FakePublisher(hold=go)
    _attach(ck, consumer, FakeDelivery(), publisher)
    assert isinstance(_checkpoint(ck, wait=False), Started)
    ck.lost()  # on_lost, while the write waits on the state topic
    go.set()
    out = ck.finish(block=True)
    assert isinstance(out, Skipped) and "lost" in out.reason
    assert consumer.committed == [] and publisher.published == [] and publisher.purged == 1
    assert own.published == {}  # nothing is believed published


def test_losing_partitions_tells_who_must_stop_publishing_for_them(settings):
    _, own = _parts(settings)
    rb, _ = _rebalance(settings, own, Written(1))
    told: list[set[int]] = []
    rb.deposed = told.append
    rb.on_lost(FakeConsumer(), [TopicPartition(CTX, 0), TopicPartition(REW, 0)])  # type: ignore[arg-type]
    assert told == [{0}] and own.held == set()


def test_a_rejoin_after_a_freeze_drops_the_state_unsaved_and_joins_again(settings):
    from stream.lifecycle import Paused
    from stream.state.membership import Membership

    ck, own = _parts(settings)
    rb, ready = _rebalance(settings, own, Written(1))
    calls: list[str] = []

    class Group(FakeConsumer):
        def subscribe(self, topics: Any, **callbacks: Any) -> None:
            calls.append("subscribe")

        def unsubscribe(self) -> None:
            calls.append("unsubscribe")
            rb.on_revoke(self, [TopicPartition(CTX, 0)])  # type: ignore[arg-type]

    checkpoints: list[int] = []
    rb.checkpoint = lambda: checkpoints.append(1) or Written(1)  # type: ignore[assignment,func-returns-value]
    m = Membership(settings, rb, own, ck, ready)
    m.consumer = Group()  # type: ignore[assignment]
    m.rejoin(Paused("the process stood still for 9.0 s"))
    assert calls == ["unsubscribe", "subscribe"] and checkpoints == []  # nothing saved
    assert own.held == set() and "d" not in own.domains.states and not ready.is_set()
    assert m.rejoins == 1


def test_a_freeze_past_the_limit_is_seen_by_whichever_thread_wakes_first():
    from stream.lifecycle import Paused, PauseWatch

    watch = PauseWatch(limit_s=1.0)
    watch.check()  # nothing yet
    watch.last -= 5.0  # the whole process stood still for 5 s; the loop wakes first
    with pytest.raises(Paused):
        watch.check()
    watch.check()  # once


def test_every_change_a_record_carries_marks_its_domain_changed(settings):
    """An early reward held, expired or dropped, a refused decision: each must reach the
    state topic, or a new owner restores without it (its decision then learns the default)."""
    ck, own = _parts(settings)
    _attach(ck, FakeConsumer(POSITIONS), FakeDelivery(), FakePublisher())
    assert isinstance(_checkpoint(ck), Written)
    assert "d" not in own.publish_plan()[0]  # published, unchanged
    early = own.joins.early
    early.wait_s = 60.0
    early.hold("d", "e1", 1.0, at=0.0, partition=0)
    assert "d" in own.publish_plan()[0]
    assert isinstance(_checkpoint(ck), Written)
    assert "d" not in own.publish_plan()[0]
    early.expire(1e9)
    assert "d" in own.publish_plan()[0]


def test_a_revoke_whose_checkpoint_fails_withdraws_what_it_queued(settings):
    _, own = _parts(settings)
    rb, _ = _rebalance(settings, own, Skipped("flush timed out"))
    told: list[set[int]] = []
    rb.deposed = told.append
    rb.on_revoke(FakeConsumer(), [TopicPartition(CTX, 0)])  # type: ignore[arg-type]
    assert told == [{0}] and own.held == set()


def test_a_state_topic_that_cannot_be_read_stops_the_restore(settings, monkeypatch):
    """Restored without it, a partition could start behind another owner's state (or
    empty) under a newer epoch, and overwrite that state on the topic."""
    from stream.errors import CheckpointError
    from stream.state import ownership as ownership_module

    def unreadable(*a: Any) -> Any:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    monkeypatch.setattr(ownership_module, "read_state_topic", unreadable)
    _, own = _parts(settings)
    own.held = set()
    with pytest.raises(CheckpointError):
        own.assign({0})


@pytest.mark.parametrize("wait", [True, False], ids=["revoke", "periodic"])
def test_a_decision_held_back_across_a_freeze_keeps_its_input_uncommitted(settings, wait):
    """A decision librdkafka gave up on across a freeze past the session is neither sent
    nor counted settled: a checkpoint on revoke, shutdown or its period commits nothing
    past its context (found by review: it was dropped and its offset committed)."""
    import time

    from stream.kafka.delivery import Delivery
    from stream.lifecycle import PauseWatch
    from tests.fakes import FakeProducer

    ck, _own = _parts(settings)
    producer = FakeProducer(lambda m: KafkaError(KafkaError._MSG_TIMED_OUT))
    delivery = Delivery(producer, "decisions")  # type: ignore[arg-type]
    delivery.may_resend = PauseWatch(0.05).running
    delivery.produce(b"decision for the context at offset 6", b"d")
    time.sleep(0.1)  # stopped past the limit, then continued
    consumer = FakeConsumer(POSITIONS)
    _attach(ck, consumer, delivery, FakePublisher())
    out = _checkpoint(ck, wait=wait)
    assert isinstance(out, Skipped) and "unacknowledged" in out.reason
    assert producer.delivered == [] and consumer.committed == []
    assert ck.store.versions() == []


def test_a_restore_skips_a_local_version_pruned_while_it_reads(settings, monkeypatch):
    """The background writer may prune an old version between the restore's listing and
    its load: that version is skipped, not a reason to stop (found by CI: 'no checkpoint
    version 36' raised in on_assign)."""
    from stream.errors import CheckpointError

    ck, own = _parts(settings)
    _attach(ck, FakeConsumer(POSITIONS), FakeDelivery(), FakePublisher())
    first = _checkpoint(ck)
    second = _checkpoint(ck)
    assert isinstance(first, Written) and isinstance(second, Written)
    load = own.store.load

    def pruned(version: int) -> Any:
        if version == second.version:
            raise CheckpointError(f"no checkpoint version {version}")
        return load(version)

    monkeypatch.setattr(own.store, "load", pruned)
    found = own._local({0})
    assert set(found) == {0} and found[0].offsets[(CTX, 0)] == 7
