"""orjson <-> event dataclasses. The wire contract is documented in docs/events.md.

Decoding never raises anything but :class:`DecodeError`, whose ``code`` is a stable
machine-readable reason (also the dead-letter code) and ``reason`` a human sentence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from stream.errors import StreamError

DOMAIN_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_EVENT_ID = 128
MAX_STRING = 1024  # candidate names, unit ids, feature keys and string values


class DecodeError(StreamError):
    """A message that does not meet the event contract."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


Scalar = float | int | bool | str | None


@dataclass(slots=True)
class ContextEvent:
    event_id: str
    domain: str
    context: dict[str, Scalar]
    candidates: list[str]
    candidate_features: dict[str, dict[str, Scalar]] | None = None
    unit_id: str | None = None
    timestamp: float | None = None
    source: Any = None  # the consumed message's Source, for a dead letter


@dataclass(slots=True)
class RewardEvent:
    event_id: str
    domain: str
    reward: float
    timestamp: float | None = None
    source: Any = None  # the consumed message's Source, for a dead letter


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 1_048_576
    max_candidates: int = 64
    reward_min: float = 0.0
    reward_max: float = 1.0
    max_context_features: int = 1_000


def _load(value: bytes | None, limits: Limits) -> dict[str, Any]:
    if value is None:
        raise DecodeError("empty", "message has no value")
    if len(value) > limits.max_message_bytes:
        raise DecodeError(
            "oversized", f"message is {len(value)} bytes, over the {limits.max_message_bytes} limit"
        )
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise DecodeError(
                "invalid_utf8", f"not valid UTF-8: {uexc.reason} at byte {uexc.start}"
            ) from None
        raise DecodeError("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError("wrong_type", f"event must be a JSON object, got {type(obj).__name__}")
    return obj


# Domains already validated, with their bytes (the key they must be produced with): the
# same few domains arrive again and again; bounded, as a hostile stream can vary them.
_VALID_DOMAINS: dict[str, bytes] = {}
MAX_VALID_DOMAINS = 100_000


def _ids(obj: dict[str, Any], key: bytes | None) -> tuple[str, str]:
    event_id = obj.get("event_id")
    if event_id is None:
        raise DecodeError("missing_field", "event_id is required")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_EVENT_ID:
        raise DecodeError(
            "bad_event_id", f"event_id must be a string of 1-{MAX_EVENT_ID} characters"
        )
    domain = obj.get("domain")
    if domain is None:
        raise DecodeError("missing_field", "domain is required")
    if not isinstance(domain, str):
        raise DecodeError("bad_domain", "domain must match [A-Za-z0-9_.-]{1,64}")
    encoded = _VALID_DOMAINS.get(domain)
    if encoded is None:
        if not DOMAIN_RE.fullmatch(domain):
            raise DecodeError("bad_domain", "domain must match [A-Za-z0-9_.-]{1,64}")
        if len(_VALID_DOMAINS) >= MAX_VALID_DOMAINS:
            _VALID_DOMAINS.clear()
        encoded = _VALID_DOMAINS[domain] = domain.encode()
    if key is not None and key != encoded:
        raise DecodeError("key_mismatch", "message key must be the domain")
    return event_id, domain


def _timestamp(obj: dict[str, Any]) -> float | None:
    ts = obj.get("timestamp")
    if ts is None:
        return None
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts < 0:
        raise DecodeError("bad_timestamp", "timestamp must be non-negative epoch seconds")
    return float(ts)


def _features(obj: Any, where: str) -> dict[str, Scalar]:
    if not isinstance(obj, dict):
        raise DecodeError("bad_context", f"{where} must be an object")
    for k, v in obj.items():
        if len(k) > MAX_STRING:
            raise DecodeError("bad_context", f"{where} has a key over {MAX_STRING} characters")
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, str):
            if len(v) > MAX_STRING:
                raise DecodeError(
                    "bad_context", f"{where}.{k[:64]} is over {MAX_STRING} characters"
                )
        elif isinstance(v, int | float):
            if not math.isfinite(v):  # orjson rejects inf/nan literals; this is belt and braces
                raise DecodeError("bad_context", f"{where}.{k[:64]} is not finite")
        else:
            raise DecodeError(
                "bad_context",
                f"{where}.{k[:64]} must be a number, bool, string or null, got {type(v).__name__}",
            )
    return obj


def _count_features(obj: dict[str, Any], limit: int) -> None:
    """Memory per pending decision grows with its features: the count is bounded."""
    n = len(obj["context"]) if isinstance(obj["context"], dict) else 0
    cf = obj.get("candidate_features")
    if isinstance(cf, dict):
        n += sum(len(f) for f in cf.values() if isinstance(f, dict))
    if n > limit:
        raise DecodeError(
            "too_many_features",
            f"{n} context and candidate features, over RL_MAX_CONTEXT_FEATURES={limit}",
        )


def decode_context(value: bytes | None, key: bytes | None, limits: Limits) -> ContextEvent:
    obj = _load(value, limits)
    event_id, domain = _ids(obj, key)
    if "context" not in obj:
        raise DecodeError("missing_field", "context is required (it may be empty)")
    _count_features(obj, limits.max_context_features)  # before any per-feature work
    context = _features(obj["context"], "context")
    cands = obj.get("candidates")
    if cands is None:
        raise DecodeError("missing_field", "candidates is required")
    if not isinstance(cands, list) or not 1 <= len(cands) <= limits.max_candidates:
        raise DecodeError(
            "bad_candidates", f"candidates must be an array of 1-{limits.max_candidates} strings"
        )
    for c in cands:
        if not isinstance(c, str) or not 1 <= len(c) <= MAX_STRING:
            raise DecodeError("bad_candidates", "every candidate must be a non-empty string")
    if len(set(cands)) != len(cands):
        raise DecodeError("bad_candidates", "candidates must be distinct")
    cf_raw = obj.get("candidate_features")
    cf: dict[str, dict[str, Scalar]] | None = None
    if cf_raw is not None:
        if not isinstance(cf_raw, dict):
            raise DecodeError("bad_candidate_features", "candidate_features must be an object")
        known = set(cands)
        for a in cf_raw:
            if a not in known:
                raise DecodeError(
                    "bad_candidate_features",
                    f"candidate_features names {a[:64]!r}, not a candidate",
                )
        cf = {a: _features(f, f"candidate_features.{a[:64]}") for a, f in cf_raw.items()}
    unit_id = obj.get("unit_id")
    if unit_id is not None and (
        not isinstance(unit_id, str) or not 1 <= len(unit_id) <= MAX_STRING
    ):
        raise DecodeError("bad_unit_id", "unit_id must be a non-empty string")
    return ContextEvent(event_id, domain, context, cands, cf, unit_id, _timestamp(obj))


def decode_reward(value: bytes | None, key: bytes | None, limits: Limits) -> RewardEvent:
    obj = _load(value, limits)
    event_id, domain = _ids(obj, key)
    if "reward" not in obj:
        raise DecodeError("missing_field", "reward is required")
    r = obj["reward"]
    if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r):
        raise DecodeError("bad_reward", "reward must be a finite number")
    if not limits.reward_min <= r <= limits.reward_max:
        raise DecodeError(
            "reward_out_of_range", f"reward {r} is outside {limits.reward_min}..{limits.reward_max}"
        )
    return RewardEvent(event_id, domain, float(r), _timestamp(obj))


def encode_decision(
    *,
    event_id: str,
    domain: str,
    action: str,
    probability: float,
    probabilities: dict[str, float],
    policy: str,
    policy_version: int,
    variant: str,
    timestamp: float,
    latency_ms: float,
) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "domain": domain,
            "action": action,
            "probability": probability,
            "probabilities": probabilities,
            "policy": policy,
            "policy_version": policy_version,
            "variant": variant,
            "timestamp": timestamp,
            "latency_ms": latency_ms,
        }
    )
