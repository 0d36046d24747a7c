from __future__ import annotations

from policies.features import EncodedContext
from stream.core.early import EarlyReward
from stream.core.join import Outcome, Pending, PendingJoins


def pend(eid: str, t: float, wait: float = 10.0, domain: str = "d") -> Pending:
    enc = EncodedContext(([], []), ("a",))
    return Pending(domain, eid, enc, 0, 1.0, "p", "control", t, t + wait)


def test_first_reward_wins_then_duplicate():
    j = PendingJoins(10, 10.0)
    j.add(pend("e1", 0))
    outcome, p = j.take("d", "e1")
    assert outcome is Outcome.JOINED and p is not None and p.event_id == "e1"
    assert j.take("d", "e1") == (Outcome.DUPLICATE, None)
    assert j.take("other", "e1") == (Outcome.UNKNOWN, None)
    assert j.take("d", "nope") == (Outcome.UNKNOWN, None)


def test_expiry_in_deadline_order_then_late():
    j = PendingJoins(10, 10.0)
    for i in range(5):
        j.add(pend(f"e{i}", float(i)))
    expired = j.expire(12.5)  # deadlines 10, 11, 12 are before it
    assert [p.event_id for p in expired] == ["e0", "e1", "e2"]
    assert len(j) == 2
    assert j.take("d", "e0") == (Outcome.LATE, None)
    assert j.take("d", "e4")[0] is Outcome.JOINED


def test_bounded_evicts_oldest():
    j = PendingJoins(3, 10.0)
    evicted = []
    for i in range(5):
        evicted += j.add(pend(f"e{i}", float(i)))
    assert [p.event_id for p in evicted] == ["e0", "e1"]
    assert len(j) == 3
    assert j.take("d", "e1") == (Outcome.LATE, None)


def test_finished_memory_is_bounded():
    j = PendingJoins(5, 10.0, remember=4)
    for i in range(20):
        j.add(pend(f"e{i}", 0.0))
        j.take("d", f"e{i}")
    outcomes = [j.take("d", f"e{i}")[0] for i in range(20)]
    assert outcomes == [Outcome.UNKNOWN] * 16 + [Outcome.DUPLICATE] * 4  # the last 4 kept


def test_duplicate_pending_key_refused():
    import pytest

    j = PendingJoins(5, 10.0)
    j.add(pend("e", 0.0))
    with pytest.raises(KeyError):
        j.add(pend("e", 1.0))


def test_early_rewards_wait_for_their_context_then_expire():
    j = PendingJoins(3, 10.0, early_wait_s=5.0)
    early = j.early
    assert j.take("d", "x")[0] is Outcome.UNKNOWN
    assert early.hold("d", "x", 0.7, at=0.0) == (True, [])
    assert early.hold("d", "x", 0.1, at=1.0) == (True, [])  # both held, judged at the join
    claimed = early.claim("d", "x")
    assert [(e.reward, e.timestamp) for e in claimed] == [(0.7, 0.0), (0.1, 1.0)]  # read order
    assert early.claim("d", "x") == [] and len(early) == 0
    early.hold("d", "y", 1.0, at=0.0, source="src-y")
    early.hold("d", "z", 1.0, at=4.0)
    assert early.expire(4.5) == []
    assert early.expire(5.5) == [EarlyReward("d", "y", 1.0, 5.0, -1, "src-y", 0.0)]  # given up
    assert [e.event_id for e in early.items()] == ["z"]
    pushed = []
    for i in range(10):  # bounded like the pending joins; the oldest are given up on
        pushed += early.hold("d", f"n{i}", 0.0, at=4.0)[1]
    assert len(early.items()) == 3
    assert [p.event_id for p in pushed] == ["z"] + [f"n{i}" for i in range(7)]


def test_early_rewards_wait_in_their_own_partitions_time():
    j = PendingJoins(10, 10.0, early_wait_s=5.0)
    j.early.hold("d", "p0", 1.0, at=0.0, partition=0)
    j.early.hold("e", "p1", 1.0, at=0.0, partition=1)
    # Partition 1's contexts are read past the deadline, partition 0's are not.
    gone = j.early.expire({0: 3.0, 1: 6.0})
    assert [e.event_id for e in gone] == ["p1"]
    assert [e.event_id for e in j.early.items()] == ["p0"]


def test_early_rewards_off_by_default():
    assert PendingJoins(3, 10.0).early.hold("d", "x", 1.0, at=0.0) == (False, [])


def test_a_reward_stamped_after_the_deadline_is_late_and_the_decision_expires():
    j = PendingJoins(10, 10.0)
    j.add(pend("e", 100.0))  # deadline 110
    assert j.take("d", "e", at=110.5) == (Outcome.LATE, None)
    assert ("d", "e") in j  # still waiting: a reward stamped in time may follow
    outcome, p = j.take("d", "e", at=109.0)
    assert outcome is Outcome.JOINED and p is not None


def test_windows_close_per_partition_in_its_own_time():
    """A partition whose rewards are read up to t closes the windows before t; another,
    behind, keeps its decisions waiting however late the wall clock is."""
    j = PendingJoins(10, 10.0)
    j.add(pend("a", 0.0, domain="d0"), partition=0)  # deadline 10
    j.add(pend("b", 0.0, domain="d1"), partition=1)  # deadline 10
    assert [p.event_id for p in j.expire({0: 11.0, 1: 5.0})] == ["a"]
    assert j.expire({0: 1e12}) == []  # partition 1 has no time yet: nothing closes
    assert [p.event_id for p in j.expire({1: 10.5})] == ["b"]


def test_the_finished_memory_round_trips_and_stays_a_duplicate():
    j = PendingJoins(10, 10.0)
    for i in range(3):
        j.add(pend(f"e{i}", float(i)))
    j.take("d", "e0")
    j.expire(11.5)  # e1 (deadline 11) expires; e2 (12) is still pending
    items = j.finished.copy().items()
    assert [(f.event_id, f.joined, f.deadline) for f in items] == [
        ("e0", True, 10.0),
        ("e1", False, 11.0),
    ]
    again = PendingJoins(10, 10.0)
    again.finished.restore(items)
    assert again.take("d", "e0") == (Outcome.DUPLICATE, None)
    assert again.take("d", "e1") == (Outcome.LATE, None)
    assert again.was_decided("d", "e0", at=1e9)  # joined: whenever it is re-sent
    assert again.was_decided("d", "e1", at=10.5)  # expired: re-sent within its window
    assert not again.was_decided("d", "e1", at=11.5)  # an id reused after the window


def test_every_change_of_a_domains_joins_is_counted():
    j = PendingJoins(10, 10.0, early_wait_s=5.0)
    seen = [j.changes("d")]

    def changed() -> bool:
        seen.append(j.changes("d"))
        return seen[-1] != seen[-2]

    j.add(pend("a", 0.0))
    assert changed()
    j.take("d", "a")
    assert changed()
    j.early.hold("d", "x", 1.0, at=0.0)
    assert changed()
    j.early.expire(100.0)
    assert changed()
    j.add(pend("b", 0.0))
    j.discard("d", "b")
    assert changed()
    j.add(pend("c", 0.0))
    j.expire(100.0)
    assert changed()
    j.finished.clear()
    assert changed()


def test_dropping_domains_forgets_their_finished_joins_too():
    j = PendingJoins(10, 10.0, early_wait_s=5.0)
    j.add(pend("e1", 0.0))
    assert j.take("d", "e1")[0] is Outcome.JOINED
    assert j.take("d", "e1")[0] is Outcome.DUPLICATE
    j.drop({"d"}, set())
    # Replayed after a restore, before its context: unknown (held early), not a duplicate.
    assert j.take("d", "e1")[0] is Outcome.UNKNOWN


def test_a_renewed_finished_join_is_remembered_from_its_renewal():
    j = PendingJoins(5, 10.0, remember=3)
    for e in ("e0", "e1", "e2", "e0", "e3"):  # e0 decided and joined again (a reused id)
        j.add(pend(e, 0.0))
        j.take("d", e)
    assert [j.take("d", e)[0] for e in ("e0", "e1", "e2", "e3")] == [
        Outcome.DUPLICATE,
        Outcome.UNKNOWN,  # the oldest of the last three finishes is e2
        Outcome.DUPLICATE,
        Outcome.DUPLICATE,
    ]
    for e in ("e4", "e5"):
        j.add(pend(e, 0.0))
        j.expire(100.0)
    assert j.take("d", "e5")[0] is Outcome.LATE
    assert [j.take("d", e)[0] for e in ("e0", "e2", "e3")] == [Outcome.UNKNOWN] * 2 + [
        Outcome.DUPLICATE
    ]


def test_what_pending_joins_hold_is_out_of_the_collectors_sight():
    """A service holds one decision per pending join and remembers many finished ones: a
    full cyclic collection must not have to visit each (they hold no cycles)."""
    import gc

    from policies.features import FeatureHasher

    j = PendingJoins(10, 10.0)
    p = pend("e", 0.0)
    p.encoded = FeatureHasher(8).encode({"x": 1.0, "s": "v"}, ["a"], {"a": {"y": 2.0}})
    j.add(p)
    for i in range(5):
        j.add(pend(f"f{i}", 0.0))
        j.take("d", f"f{i}")
    assert not gc.is_tracked(p) and not gc.is_tracked(p.encoded)
    gc.collect()  # the first pass untracks the inner tuples, the next one the pairs
    gc.collect()
    assert not gc.is_tracked(p.encoded.context) and not gc.is_tracked(p.encoded.candidates)
    assert not gc.is_tracked(j.finished._names)


def test_held_rewards_of_one_event_expire_each_by_its_own_deadline_and_restore_once():
    """Found by review: a list of held rewards expired whole by its first deadline, a
    restore of the same reward held it twice, and eviction counted events, not rewards."""
    j = PendingJoins(5, 10.0, early_wait_s=5.0)
    early = j.early
    early.hold("d", "x", 1.0, at=0.0)  # deadline 5
    early.hold("d", "x", 0.0, at=3.0)  # deadline 8
    assert [e.timestamp for e in early.expire(6.0)] == [0.0]
    assert [e.timestamp for e in early.items()] == [3.0] and len(early) == 1
    for e in list(early.items()):
        early.restore(e)  # the same reward again (two records carried it)
    assert len(early) == 1
    for _ in range(3):
        early.hold("d", "storm", 1.0, at=4.0, partition=0)  # one event retried
    early.hold("d", "other", 1.0, at=4.0, partition=1)
    pushed = early.hold("d", "new", 1.0, at=4.0, partition=1)[1]
    # partition 0 holds the most rewards (3): its oldest event goes, not partition 1's
    assert {(e.event_id, e.partition) for e in pushed} == {("storm", 0)}
    assert len(early) == 3  # x, other, new
