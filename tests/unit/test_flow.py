"""When the contexts or the rewards pause, and that they always resume (stream/kafka/balance.py).

The consumer here only records pause / resume: the broker side is the integration test's
(tests/integration/test_flow.py).
"""

from __future__ import annotations

import time

from stream.kafka.balance import TopicBalance
from tests.fakes import FakeConsumer, FakeMessage

CTX, REW = "contexts", "rewards"
ASSIGNED = {(t, p): 0 for t in (CTX, REW) for p in (0, 1)}  # (topic, partition): position


def stamped(topic: str, ts_ms: int) -> FakeMessage:
    """A record of ``topic`` produced at ``ts_ms``."""
    return FakeMessage(topic, timestamp_ms=ts_ms)


def test_contexts_ahead_pause_until_the_rewards_catch_up():
    now = int(time.time() * 1000)
    b, c = TopicBalance(CTX, REW, bound=100), FakeConsumer(ASSIGNED)
    b.observe(stamped(CTX, now - 1_000), stamped(REW, now - 30_000))
    assert b.update(c, pending=79, early=0, fetched=50) is None  # below 80% of the bound
    assert b.update(c, pending=80, early=0, fetched=50) == CTX and c.paused_topics == {CTX}
    b.observe(None, stamped(REW, now - 20_000))
    b.update(c, pending=85, early=0, fetched=50)
    assert c.paused_topics == {CTX}  # rewards still 19 s behind, 85 still pending
    b.observe(None, stamped(REW, now - 2_000))
    b.update(c, pending=85, early=0, fetched=50)
    assert c.paused_topics == set()  # caught up within the slack


def test_rewards_ahead_pause_until_few_are_held():
    now = int(time.time() * 1000)
    b, c = TopicBalance(CTX, REW, bound=100), FakeConsumer(ASSIGNED)
    b.observe(stamped(CTX, now - 30_000), stamped(REW, now - 1_000))
    assert b.update(c, pending=0, early=95, fetched=50) == REW and c.paused_topics == {REW}
    b.observe(stamped(CTX, now - 25_000), None)
    b.update(c, pending=0, early=70, fetched=50)
    assert c.paused_topics == {REW}  # still 70% held, contexts still behind
    b.update(c, pending=0, early=60, fetched=50)
    assert c.paused_topics == set()  # down to 60% held


def test_rewards_that_never_come_hold_the_contexts_up_once():
    now = int(time.time() * 1000)
    # Nothing was ever read from the rewards: the contexts pause once, the next read brings
    # nothing, they resume, and they do not pause again until a reward is read.
    b, c = TopicBalance(CTX, REW, bound=100), FakeConsumer(ASSIGNED)
    b.observe(stamped(CTX, now - 5_000), None)
    assert b.update(c, pending=100, early=0, fetched=20) == CTX
    b.update(c, pending=100, early=0, fetched=0)
    assert c.paused_topics == set()
    for _ in range(5):
        b.observe(stamped(CTX, now), None)
        assert b.update(c, pending=100, early=0, fetched=20) is None
    b.observe(None, stamped(REW, now - 60_000))  # rewards flow again, far behind
    assert b.update(c, pending=100, early=0, fetched=20) == CTX and c.paused_topics == {CTX}


def test_a_producer_clock_in_the_future_counts_as_now():
    now = int(time.time() * 1000)
    b, c = TopicBalance(CTX, REW, bound=100), FakeConsumer(ASSIGNED)
    b.observe(stamped(CTX, now + 3_600_000), stamped(REW, now - 500))
    assert b.update(c, pending=100, early=0, fetched=50) is None  # rewards are not behind


def test_a_new_assignment_forgets_the_pause():
    """librdkafka forgets pauses with the partitions: after a rebalance the balance pauses
    the new assignment again when it needs to, instead of believing it still has."""
    now = int(time.time() * 1000)
    b, c = TopicBalance(CTX, REW, bound=100), FakeConsumer(ASSIGNED)
    b.observe(stamped(CTX, now), stamped(REW, now - 10_000))
    assert b.update(c, pending=100, early=0, fetched=10) == CTX
    c.paused.clear()  # the new assignment starts unpaused
    b.reset()
    assert b.update(c, pending=100, early=0, fetched=10) is None  # nothing read of it yet
    b.observe(stamped(CTX, now), stamped(REW, now - 10_000))
    assert b.update(c, pending=100, early=0, fetched=10) == CTX
    assert c.paused_topics == {CTX}


def test_what_was_read_before_an_assignment_says_nothing_of_the_new_one():
    """A live instance takes a partition restored from an hour-old checkpoint: its rewards
    run ahead of its contexts, and the times read before must not hide that."""
    now = int(time.time() * 1000)
    b, c = TopicBalance(CTX, REW, bound=100), FakeConsumer(ASSIGNED)
    b.observe(stamped(CTX, now), stamped(REW, now))
    b.reset()
    b.observe(stamped(CTX, now - 3_600_000), stamped(REW, now - 3_500_000))
    assert b.update(c, pending=0, early=85, fetched=50) == REW


def test_the_side_that_ran_ahead_while_the_other_waited_pauses_as_it_resumes():
    """The contexts waited for the rewards; the rewards, read from what the consumer had
    fetched, overtook them and fill the early holds: the contexts resume and the rewards
    pause in the same turn (both read at once, the holds would overflow their bound)."""
    now = int(time.time() * 1000)
    b, c = TopicBalance(CTX, REW, bound=100), FakeConsumer(ASSIGNED)
    b.observe(stamped(CTX, now - 10_000), stamped(REW, now - 30_000))
    assert b.update(c, pending=85, early=0, fetched=50) == CTX
    b.observe(None, stamped(REW, now - 2_000))  # now 8 s ahead of the contexts
    assert b.update(c, pending=10, early=85, fetched=50) == REW
    assert c.paused_topics == {REW}


def test_the_bound_leaves_room_for_one_more_batch():
    assert TopicBalance(CTX, REW, bound=200, batch=50).high == 150
    assert TopicBalance(CTX, REW, bound=100_000, batch=10_000).high == 80_000
