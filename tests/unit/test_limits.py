"""Limits by size where size is the risk: features per event, the key cache in bytes,
early rewards without their raw bytes, reward-only domains counted."""

from __future__ import annotations

import orjson
import pytest

from policies.features import FeatureHasher
from stream.codec import DecodeError, Limits, decode_context
from stream.deadletter import Source
from stream.join import PendingJoins


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
    joins.hold_early("g1", "e1", 1.0, now=0.0)
    joins.hold_early("g1", "e2", 1.0, now=0.0)
    joins.hold_early("g2", "e1", 1.0, now=1.0)
    assert joins.early_domains() == {"g1", "g2"}
    assert joins.claim_early("g1", "e1") == 1.0
    assert joins.early_domains() == {"g1", "g2"}
    joins.hold_early("g3", "e1", 1.0, now=2.0)
    joins.hold_early("g4", "e1", 1.0, now=3.0)  # pushes g1's last hold out (bound 3)
    assert joins.early_domains() == {"g2", "g3", "g4"}
    joins.expire_early(now=11.5)  # g2 (held at 1.0) expires
    assert joins.early_domains() == {"g3", "g4"}
    joins.drop({"g3"}, set())
    assert joins.early_domains() == {"g4"}
