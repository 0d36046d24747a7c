"""Limits by size where size is the risk: features per event, the key cache in bytes,
early rewards without their raw bytes, reward-only domains counted."""

from __future__ import annotations

import time

import orjson
import pytest

from policies.features import FeatureHasher
from stream.core.join import PendingJoins
from stream.kafka.codec import DecodeError, Limits, decode_context
from stream.kafka.deadletter import Source


def _context(n_context: int, n_candidate: int = 0) -> bytes:
    doc = {
        "event_id": "e",
        "domain": "d",
        "context": {f"k{i}": 1.0 for i in range(n_context)},
        "candidates": ["a", "b"],
    }
    if n_candidate:
        doc["candidate_features"] = {"a": {f"f{i}": 1.0 for i in range(n_candidate)}}
    return orjson.dumps(doc)


def test_an_event_with_too_many_features_is_rejected_with_its_code():
    limits = Limits(max_context_features=100)
    assert len(decode_context(_context(60, 40), b"d", limits).context) == 60
    for value in (_context(101), _context(60, 41)):
        with pytest.raises(DecodeError) as e:
            decode_context(value, b"d", limits)
        assert e.value.code == "too_many_features"
        assert "RL_MAX_CONTEXT_FEATURES=100" in e.value.reason


def test_the_key_cache_is_bounded_in_bytes():
    h = FeatureHasher(64, cache_bytes=1_000_000)
    value = "v" * 1000
    for i in range(20_000):  # 20 MB of distinct 1,008-character tokens
        h.sparse({"key": f"{i:07d}{value}"})
    assert h._cached_bytes <= 1_000_000
    assert sum(len(k) for k in h._cache) <= 1_000_000


def test_a_held_reward_keeps_what_it_says_not_its_raw_bytes():
    raw = Source("rewards", 2, 7, 1000, b"d" * 5000, b'{"pad": "' + b"x" * 990_000 + b'"}')
    src = Source.of_reward(raw, "e1", "d", 1.0)
    assert (src.topic, src.partition, src.offset) == ("rewards", 2, 7)
    assert orjson.loads(src.value or b"") == {"event_id": "e1", "domain": "d", "reward": 1.0}
    assert len(src.value or b"") + len(src.key or b"") < 100


def test_reward_only_domains_are_tracked_as_their_holds_come_and_go():
    joins = PendingJoins(max_pending=3, wait_s=60.0, early_wait_s=10.0)
    early = joins.early
    early.hold("g1", "e1", 1.0, at=0.0)
    early.hold("g1", "e2", 1.0, at=0.0)
    early.hold("g2", "e1", 1.0, at=1.0)
    assert early.domains() == {"g1", "g2"}
    (claimed,) = early.claim("g1", "e1")
    assert claimed.reward == 1.0
    assert early.domains() == {"g1", "g2"}
    early.hold("g3", "e1", 1.0, at=2.0)
    early.hold("g4", "e1", 1.0, at=3.0)  # pushes g1's last hold out (bound 3)
    assert early.domains() == {"g2", "g3", "g4"}
    early.expire(11.5)  # g2 (held at 1.0, deadline 11.0) expires
    assert early.domains() == {"g3", "g4"}
    joins.drop({"g3"}, set())
    assert early.domains() == {"g4"}


def _pending(domain: str, eid: str):
    from stream.core.join import Pending

    return Pending(domain, eid, None, 0, 0.5, "p", "control", 0.0, 1e12)  # type: ignore[arg-type]


def test_a_busy_domain_never_evicts_a_quiet_ones_pending_decisions():
    """On 56420a3 the bound was one queue: the busy domain's flood evicted 'quiet'."""
    joins = PendingJoins(max_pending=10, wait_s=60.0)
    for i in range(3):
        joins.add(_pending("quiet", f"q{i}"))
    evicted = []
    for i in range(50):
        evicted += joins.add(_pending("busy", f"b{i}"))
    assert {p.domain for p in evicted} == {"busy"}
    assert joins.count_of("quiet") == 3 and joins.count_of("busy") == 7
    # A new domain when the total is full takes from the fullest domain only.
    (out,) = joins.add(_pending("new", "n0"))
    assert out.domain == "busy" and joins.count_of("quiet") == 3


def test_a_domain_at_its_own_bound_gives_up_its_oldest():
    joins = PendingJoins(max_pending=100, wait_s=60.0, max_per_domain=4)
    evicted = [p.event_id for i in range(6) for p in joins.add(_pending("d", f"e{i}"))]
    assert evicted == ["e0", "e1"] and joins.count_of("d") == 4
    assert joins.take("d", "e0")[0].value == "late"  # its reward now counts as late
    assert joins.take("d", "e5")[0].value == "joined" and joins.count_of("d") == 3


def test_the_memory_guard_sheds_the_oldest_pending_when_trimming_is_not_enough(
    tmp_path, monkeypatch
):
    from stream.config import load_settings
    from stream.observe.memory import MemoryGuard
    from stream.service import Service

    svc = Service(load_settings(state_dir=tmp_path, default_reward=0.0))
    st = svc.domains.get_or_create("d")
    assert st is not None
    enc = svc.hasher.encode({"x": 1.0}, ["a", "b"])
    from stream.core.join import Pending

    for i in range(20):
        svc.joins.add(Pending("d", f"e{i}", enc, 0, 0.5, "epsilon_greedy", "control", 0.0, 1e12))
    guard = MemoryGuard(
        limit_mb=50,
        interval_s=10,
        trim=lambda: {},
        shed=svc._shed,
        rss_mb=lambda: 100.0,  # never goes down
    )
    assert guard.check(now=10.0 + time.monotonic())  # an interval later
    assert len(svc.joins) == 18 and ("d", "e0") not in svc.joins and ("d", "e2") in svc.joins
    assert st.expired == 2 and len(st.buffer) == 2  # learned with the default reward
