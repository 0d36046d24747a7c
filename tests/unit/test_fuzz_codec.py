"""Property-based fuzzing of the decoders: hostile input is rejected with a code, never
raised as anything else, and valid input round-trips."""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.kafka.codec import (
    ContextEvent,
    DecodeError,
    Limits,
    RewardEvent,
    decode_context,
    decode_reward,
)

LIMITS = Limits(max_message_bytes=4096, max_candidates=8)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "event_id",
        "domain",
        "context",
        "candidates",
        "candidate_features",
        "unit_id",
        "timestamp",
        "reward",
        "x",
    ]
)
shaped = st.dictionaries(field_names, json_values, max_size=8)  # right names, wrong shapes


def decode_both(raw: bytes | None, key: bytes | None) -> None:
    for decode in (decode_context, decode_reward):
        try:
            ev = decode(raw, key, LIMITS)
        except DecodeError as exc:
            assert exc.code and exc.reason  # every rejection says why
        else:
            assert isinstance(ev, ContextEvent | RewardEvent)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.none() | st.binary(max_size=20))
def test_random_bytes(raw, key):
    decode_both(raw, key)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | shaped)
def test_hostile_json_shapes(value):
    decode_both(json.dumps(value).encode(), None)  # stdlib: also ints past 64 bits


@settings(max_examples=200)
@given(st.integers(min_value=1, max_value=5000))
def test_deep_nesting_and_huge_strings(depth):
    decode_both(b"[" * depth + b"]" * depth, None)
    decode_both(b'{"context": ' * min(depth, 2000) + b"1" + b"}" * min(depth, 2000), None)
    huge = orjson.dumps(
        {"event_id": "e", "domain": "d", "context": {"s": "x" * depth * 3}, "candidates": ["a"]}
    )
    decode_both(huge, b"d")


@settings(max_examples=300)
@given(
    st.text(min_size=1, max_size=30),
    st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=8, unique=True),
    st.dictionaries(st.text(max_size=10), scalars, max_size=6),
)
def test_valid_contexts_round_trip(event_id, candidates, context):
    raw = json.dumps(
        {"event_id": event_id, "domain": "shop", "context": context, "candidates": candidates}
    ).encode()
    try:
        ev = decode_context(raw, b"shop", LIMITS)
    except DecodeError as exc:  # only the documented limits may refuse a well-shaped one
        assert exc.code in ("bad_event_id", "bad_context", "bad_candidates", "oversized")
        return
    assert ev.event_id == event_id and ev.candidates == candidates
