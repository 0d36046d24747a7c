from __future__ import annotations

import orjson
import pytest

from stream.kafka.codec import (
    Decision,
    DecodeError,
    Limits,
    decode_context,
    decode_reward,
    encode_decision,
)

LIM = Limits(max_message_bytes=2000, max_candidates=4, reward_min=0.0, reward_max=1.0)


def ctx(**over):
    doc = {
        "event_id": "e1",
        "domain": "dom",
        "context": {"a": 1, "b": "x", "c": True, "d": None},
        "candidates": ["p", "q"],
    }
    doc.update(over)
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


def test_valid_context():
    ev = decode_context(
        ctx(unit_id="u", timestamp=5, candidate_features={"p": {"cost": 2}}), b"dom", LIM
    )
    assert ev.event_id == "e1" and ev.domain == "dom" and ev.candidates == ["p", "q"]
    assert ev.context == {"a": 1, "b": "x", "c": True, "d": None}
    assert ev.unit_id == "u" and ev.timestamp == 5.0
    assert ev.candidate_features == {"p": {"cost": 2}}


def test_key_may_be_absent_but_not_another_domain():
    assert decode_context(ctx(), None, LIM).domain == "dom"
    with pytest.raises(DecodeError) as e:
        decode_context(ctx(), b"other", LIM)
    assert e.value.code == "key_mismatch"


@pytest.mark.parametrize(
    "value,code",
    [
        (None, "empty"),
        (b"x" * 2001, "oversized"),
        (b"\xff\xfe", "invalid_utf8"),
        (b"{nope", "invalid_json"),
        (b"NaN", "invalid_json"),
        (
            b'{"event_id": "e", "domain": "d", "context": {"v": 1e999}, "candidates": ["a"]}',
            "invalid_json",
        ),
        (b"[]", "wrong_type"),
        (ctx(event_id=...), "missing_field"),
        (ctx(event_id=""), "bad_event_id"),
        (ctx(event_id="x" * 129), "bad_event_id"),
        (ctx(event_id=5), "bad_event_id"),
        (ctx(domain=...), "missing_field"),
        (ctx(domain="has space"), "bad_domain"),
        (ctx(domain="x" * 65), "bad_domain"),
        (ctx(context=...), "missing_field"),
        (ctx(context=[1]), "bad_context"),
        (ctx(context={"a": {"nested": 1}}), "bad_context"),
        (ctx(context={"a": [1]}), "bad_context"),
        (ctx(candidates=...), "missing_field"),
        (ctx(candidates=[]), "bad_candidates"),
        (ctx(candidates=["a", "b", "c", "d", "e"]), "bad_candidates"),
        (ctx(candidates=["a", "a"]), "bad_candidates"),
        (ctx(candidates=["a", 1]), "bad_candidates"),
        (ctx(candidates=[""]), "bad_candidates"),
        (ctx(candidates="a"), "bad_candidates"),
        (ctx(candidate_features={"zzz": {}}), "bad_candidate_features"),
        (ctx(candidate_features={"p": {"x": [1]}}), "bad_context"),
        (ctx(candidate_features=[1]), "bad_candidate_features"),
        (ctx(unit_id=7), "bad_unit_id"),
        (ctx(timestamp="now"), "bad_timestamp"),
        (ctx(timestamp=-1), "bad_timestamp"),
    ],
)
def test_context_rejections(value, code):
    with pytest.raises(DecodeError) as e:
        decode_context(value, None, LIM)
    assert e.value.code == code
    assert e.value.reason


def test_reward():
    r = decode_reward(orjson.dumps({"event_id": "e", "domain": "d", "reward": 1}), b"d", LIM)
    assert r.reward == 1.0 and isinstance(r.reward, float)


@pytest.mark.parametrize(
    "reward,code",
    [
        (1.5, "reward_out_of_range"),
        (-0.1, "reward_out_of_range"),
        (True, "bad_reward"),
        ("1", "bad_reward"),
        (None, "bad_reward"),
        (..., "missing_field"),
    ],
)
def test_reward_rejections(reward, code):
    doc = {"event_id": "e", "domain": "d"}
    if reward is not ...:
        doc["reward"] = reward
    with pytest.raises(DecodeError) as e:
        decode_reward(orjson.dumps(doc), None, LIM)
    assert e.value.code == code


def test_encode_decision_round_trips():
    raw = encode_decision(
        Decision(
            event_id="e",
            domain="d",
            action="a",
            probability=0.75,
            probabilities={"a": 0.75, "b": 0.25},
            policy="p",
            policy_version=3,
            variant="control",
            timestamp=1.5,
            latency_ms=0.2,
        )
    )
    doc = orjson.loads(raw)
    assert doc["probabilities"]["a"] == doc["probability"] == 0.75
    assert set(doc) == {
        "event_id",
        "domain",
        "action",
        "probability",
        "probabilities",
        "policy",
        "policy_version",
        "variant",
        "timestamp",
        "latency_ms",
    }
