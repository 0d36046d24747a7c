from __future__ import annotations

from policies.features import EncodedContext
from stream.join import EarlyReward, Outcome, Pending, PendingJoins


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
    expired = j.expire(12.5)
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
    assert j.take("d", "x")[0] is Outcome.UNKNOWN
    assert j.hold_early("d", "x", 0.7, now=0.0) == (True, [])
    assert not j.hold_early("d", "x", 0.1, now=1.0)[0]  # first reward wins
    assert j.claim_early("d", "x") == 0.7 and j.claim_early("d", "x") is None
    j.hold_early("d", "y", 1.0, now=0.0, source="src-y")
    j.hold_early("d", "z", 1.0, now=4.0)
    assert j.expire_early(4.5) == []
    assert j.expire_early(5.0) == [EarlyReward("d", "y", 1.0, 5.0, -1, "src-y")]  # given up on
    assert [e.event_id for e in j.early_items()] == ["z"]
    pushed = []
    for i in range(10):  # bounded like the pending joins; the oldest are given up on
        pushed += j.hold_early("d", f"n{i}", 0.0, now=4.0)[1]
    assert len(j.early_items()) == 3
    assert [p.event_id for p in pushed] == ["z"] + [f"n{i}" for i in range(7)]


def test_early_rewards_off_by_default():
    assert PendingJoins(3, 10.0).hold_early("d", "x", 1.0, now=0.0) == (False, [])


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
    assert not gc.is_tracked(j._finished)
