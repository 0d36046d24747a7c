"""Property-based fuzzing of the decoders: hostile input is rejected with a code, never
raised as anything else, and valid input round-trips."""

from __future__ import annotations

import json

import msgspec
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.kafka.codec import (
    ContextEvent,
    DecodeError,
    Limits,
    RewardEvent,
    _checked_context,
    _checked_reward,
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


# -- the typed (msgspec) path and the checked (Python) path agree ---------------------------
def _outcome(decode, raw: bytes | None, key: bytes | None, limits: Limits) -> tuple[str, ...]:
    try:
        ev = decode(raw, key, limits)
    except DecodeError as exc:
        return ("refused", exc.code, exc.reason)
    return ("event", repr(msgspec.structs.astuple(ev)))  # repr: 1 and 1.0, True and 1 differ


def same_outcome(raw: bytes | None, key: bytes | None, limits: Limits = LIMITS) -> None:
    for decode, checked in ((decode_context, _checked_context), (decode_reward, _checked_reward)):
        for _ in range(2):  # the second time its domain is known: the typed path may take it
            assert _outcome(decode, raw, key, limits) == _outcome(checked, raw, key, limits)


numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
)
near_scalars = scalars | numbers | st.text(min_size=1020, max_size=1030)
near_features = st.dictionaries(st.text(max_size=6), near_scalars, max_size=5) | json_values
near_valid = st.fixed_dictionaries(
    {
        "event_id": st.text(max_size=130) | json_values,
        "domain": st.sampled_from(["shop", "a.b-c_9", "bad domain", "x" * 65, ""]) | scalars,
        "context": near_features,
    },
    optional={
        "candidates": st.lists(st.text(max_size=4), max_size=10) | json_values,
        "candidate_features": st.dictionaries(st.text(max_size=4), near_features, max_size=3)
        | st.none(),
        "unit_id": st.text(max_size=3) | scalars,
        "timestamp": numbers | st.none() | st.text(max_size=3),
        "reward": numbers | st.none(),
        "source": json_values,
    },
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid, st.sampled_from([None, b"shop", b"a.b-c_9", b"other"]))
def test_typed_and_checked_paths_agree(value, key):
    same_outcome(json.dumps(value).encode(), key)  # stdlib: also ints past 64 bits


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.none() | st.binary(max_size=8))
def test_typed_and_checked_paths_agree_on_bytes(raw, key):
    same_outcome(raw, key)


def test_duplicate_keys_and_escapes_agree():
    for raw in (
        b'{"event_id":"e","event_id":"f","domain":"shop","context":{},"candidates":["a"],"reward":1}',
        b'{"event_id":"e","domain":"shop","context":{"a":1,"a":"x"},"candidates":["a","a"]}',
        b'{"event_id":"\\ud800","domain":"shop","context":{},"candidates":["a"],"reward":0}',
        b'{"event_id":"e","domain":"shop","context":{"k":18446744073709551615},"candidates":["a"]}',
        b'{"event_id":"e","domain":"shop","context":{},"candidates":["a"],"reward":1,"timestamp":1e400}',
    ):
        same_outcome(raw, b"shop")
    few = Limits(max_candidates=2, max_context_features=3, reward_min=-1.0, reward_max=0.5)
    for cf in ({}, {"a": {"p": 1}}, {"a": {"p": 1, "q": 2}}, {"z": {}}):
        for reward in (-1, 0.5, 0.75):
            for cands in (["a"], ["a", "b"], ["a", "b", "c"]):
                value = {"event_id": "e", "domain": "shop", "context": {"x": 1, "y": "s"}}
                value.update(candidates=cands, candidate_features=cf, reward=reward)
                same_outcome(orjson.dumps(value), b"shop", few)


def test_a_valid_event_takes_the_typed_path():
    raw = orjson.dumps(
        {"event_id": "e", "domain": "shop", "context": {"x": 1}, "candidates": ["a", "b"]}
    )
    decode_context(raw, b"shop", LIMITS)  # its domain is checked once
    assert type(decode_context(raw, b"shop", LIMITS)).__name__ == "TypedContext"
    reward = orjson.dumps({"event_id": "e", "domain": "shop", "reward": 1})
    assert type(decode_reward(reward, b"shop", LIMITS)).__name__ == "TypedReward"
