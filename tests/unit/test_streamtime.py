"""Windows run in stream time (the records' timestamps), judged through the processor the
service runs: downtime or lag never turns a reward produced in time into a default."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, Message

from stream.bench.hotpath import _service
from stream.config import load_settings
from stream.core.streamtime import StreamTime
from stream.errors import KafkaClientError
from stream.kafka.codec import Decision
from tests.fakes import FakeConsumer

CTX, REW = "bandit.contexts", "bandit.rewards"
HOUR_AGO = time.time() - 3600.0  # a backlog read an hour after it was produced


def context(eid: str, at: float, offset: int = 0) -> Message:
    doc = {"event_id": eid, "domain": "d", "context": {"x": 1.0}, "candidates": ["a", "b"]}
    return Message(
        topic=CTX,
        partition=0,
        offset=offset,
        key=b"d",
        value=orjson.dumps(doc),
        timestamp=(TIMESTAMP_CREATE_TIME, int(at * 1000)),
    )


def reward(eid: str, at: float, offset: int = 0) -> Message:
    doc = {"event_id": eid, "domain": "d", "reward": 1.0}
    return Message(
        topic=REW,
        partition=0,
        offset=offset,
        key=b"d",
        value=orjson.dumps(doc),
        timestamp=(TIMESTAMP_CREATE_TIME, int(at * 1000)),
    )


def end_of(topic: str) -> Message:
    return Message(topic=topic, partition=0, error=KafkaError(KafkaError._PARTITION_EOF))


@pytest.fixture
def svc(tmp_path: Any) -> Any:
    s = load_settings(state_dir=tmp_path, reward_wait_s=10.0, reward_grace_s=1.0)
    service, _ = _service(s)
    return service


def turn(svc: Any, *msgs: Message) -> None:
    svc.processor.handle(list(msgs), time.time(), time.perf_counter())


def test_a_reward_stamped_in_time_joins_however_late_it_is_read(svc):
    turn(svc, context("e", HOUR_AGO))
    turn(svc, reward("e", HOUR_AGO + 9.0))  # read an hour later: in time by its stamp
    assert svc.stats.rewards_joined == 1 and svc.stats.expired == 0


def test_a_reward_stamped_past_the_window_is_late_and_the_default_is_learned(svc):
    turn(svc, context("e", HOUR_AGO))
    turn(svc, reward("e", HOUR_AGO + 10.5))
    assert svc.stats.rewards_joined == 0 and svc.stats.late_rewards == 1
    assert len(svc.joins) == 1  # stream time (deadline + 0.5 s) is within the grace
    turn(svc, reward("other", HOUR_AGO + 11.5, 1))  # stream time passes deadline + grace
    assert svc.stats.expired == 1 and len(svc.joins) == 0


def test_a_lagging_rewards_partition_keeps_its_decisions_waiting(svc):
    turn(svc, context("e", HOUR_AGO))
    for _ in range(3):  # the wall clock is an hour past the deadline: it does not count
        turn(svc, reward("x", HOUR_AGO - 5.0))
    assert svc.stats.expired == 0 and len(svc.joins) == 1
    turn(svc, end_of(REW))  # read to its end: nothing stamped in time can still come
    assert svc.stats.expired == 1 and len(svc.joins) == 0


def test_an_early_reward_waits_in_its_contexts_partitions_time(svc):
    turn(svc, reward("e", HOUR_AGO + 5.0))
    assert svc.stats.early_rewards == 1
    turn(svc, context("other", HOUR_AGO + 30.0))  # contexts' time: the early wait is 60 s
    turn(svc, context("e", HOUR_AGO, 1))  # its context, read after a later one
    assert svc.stats.rewards_joined == 1


def test_the_clock_follows_the_wall_only_as_far_as_a_partition_was_seen_read():
    clock = StreamTime(grace_s=2.0)
    clock.read(False, 0, 100.0)
    assert clock.rewards_until({0}) == {0: 98.0}
    clock.seen_end(False, 0, at=500.0)  # read to its end at 500: nothing before it waits
    assert clock.rewards_until({0}) == {0: 498.0}
    clock.read(False, 0, 101.0)  # what was read since changes nothing of that
    clock.seen_end(False, 0, at=400.0)  # an older observation neither
    assert clock.rewards_until({0, 1}) == {0: 498.0, 1: float("-inf")}


def test_a_partition_is_at_its_end_only_as_of_an_answer_the_loop_consumed_past():
    """A quiet partition's windows close as the end watch's answers come; a partition the
    loop has not consumed to an answer's end (paused, rebalancing, behind) stays put."""
    from stream.kafka.endwatch import EndWatch

    watch = EndWatch(load_settings(topic_contexts=CTX, topic_rewards=REW))
    clock = StreamTime(grace_s=0.0)
    clock.consumed(False, 0, 40)  # consumed up to its answer's end
    clock.consumed(False, 1, 39)  # one short of it
    clock.consumed(True, 0, 9)
    watch._answers = {(REW, 0): (500.0, 40), (REW, 1): (500.0, 40), (CTX, 0): (500.0, 7)}
    watch.observe(FakeConsumer(), clock)  # type: ignore[arg-type]  # nothing assigned
    assert clock.rewards_until({0, 1}) == {0: 500.0, 1: float("-inf")}
    assert clock.contexts_until({0}) == {0: 500.0}
    watch.stop()


def test_a_checkpoint_mark_is_the_decisions_end_seen_beside_the_loop():
    from stream.kafka.decisionlog import DecisionLog
    from stream.kafka.endwatch import EndWatch

    s = load_settings(topic_contexts=CTX, topic_rewards=REW)
    log = DecisionLog(s)
    log.n = 4
    watch = EndWatch(s, log)
    watch.observe(FakeConsumer({(CTX, 5): 0, (REW, 5): 0}), StreamTime(grace_s=0.0))  # type: ignore[arg-type]
    assert (s.topic_decisions, 1) in watch._wanted  # input partition 5's decisions partition
    log.saw_end(1, 50)
    log.saw_end(1, 40)  # the latest answer: a topic created again starts low
    # No request: the consumer is never asked (None would fail if it were).
    assert log.end(None, 5) == 40  # type: ignore[arg-type]
    assert log.end(None, -1) is None  # type: ignore[arg-type]
    watch.stop()

    class Asked:  # an answer too old to serve: the end is asked for then
        def get_watermark_offsets(self, tp, timeout, cached):
            assert (tp.topic, tp.partition, cached) == (s.topic_decisions, 1, False)
            return 0, 77

    import stream.kafka.decisionlog as decisionlog

    decisionlog.SEEN_FRESH_S, fresh = -1.0, decisionlog.SEEN_FRESH_S
    try:
        assert log.end(Asked(), 5) == 77  # type: ignore[arg-type]
    finally:
        decisionlog.SEEN_FRESH_S = fresh


def test_a_fatal_consumer_error_stops_the_loop(svc):
    fenced = Message(
        topic=CTX, partition=0, error=KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    )
    with pytest.raises(KafkaClientError):
        turn(svc, fenced)


def test_a_replayed_context_is_served_the_decision_already_published(svc):
    published = Decision("e", "d", "b", 0.25, {"a": 0.75, "b": 0.25}, "linucb", 7, "control", 0, 0)
    svc.ownership.replays[0] = {5: published}  # the decision of the context at offset 5
    produced = svc.processor.delivery.producer.produced
    turn(svc, context("e", HOUR_AGO, offset=5))
    assert svc.processor.delivery.producer.produced == produced  # nothing published again
    (p,) = svc.joins.items()
    assert (p.encoded.candidates[p.chosen], p.probability, p.policy) == ("b", 0.25, "linucb")
    assert svc.stats.republished == 1 and svc.stats.decisions == 0
    turn(svc, reward("e", HOUR_AGO + 1.0))
    st = svc.domains.states["d"]
    assert st.rewards_joined == 1 and st.buffer[0][0].chosen == p.chosen


def test_a_record_stamped_in_the_future_counts_as_now(svc):
    """One producer's clock a year ahead must not close every window of its partition."""
    turn(svc, context("e", time.time()))
    turn(svc, reward("x", time.time() + 365 * 86400.0))
    assert svc.stats.expired == 0 and len(svc.joins) == 1


def test_a_context_is_served_only_the_decision_published_for_that_very_record(svc):
    """Matched by position, not by event id: an id reused after its window (another
    record) is decided anew."""
    published = Decision("e", "d", "b", 0.25, {"a": 0.75, "b": 0.25}, "linucb", 7, "control", 0, 0)
    svc.ownership.replays[0] = {5: published}
    turn(svc, context("e", HOUR_AGO, offset=9))
    assert svc.stats.republished == 0 and svc.stats.decisions == 1
