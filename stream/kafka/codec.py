"""JSON <-> events. The wire contract is documented in docs/events.md.

Decoding never raises anything but :class:`DecodeError`, whose ``code`` is a stable
machine-readable reason (also the dead-letter code) and ``reason`` a human sentence.

A message is decoded twice at most: first by msgspec against the contract written as
types (checked in C); what it refuses, or what the remaining checks refuse, is decoded
again by the checks written in Python (orjson), which name the reason. Both accept the
same messages as the same events (tests/unit/test_fuzz_codec.py).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson

from stream.core.events import ContextEvent, Decision, RewardEvent, Scalar
from stream.errors import StreamError

if TYPE_CHECKING:
    from stream.config import Settings

DOMAIN_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_EVENT_ID = 128
MAX_STRING = 1024  # candidate names, unit ids, feature keys and string values
INT_64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # orjson reads these as int


class DecodeError(StreamError):
    """A message that does not meet the event contract."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 1_048_576
    max_candidates: int = 64
    reward_min: float = 0.0
    reward_max: float = 1.0
    max_context_features: int = 1_000
    # The contract as types for these limits (:func:`_typed_decoders`).
    typed: tuple[Any, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "typed", _typed_decoders(self))

    @classmethod
    def of(cls, s: Settings) -> Limits:
        """The limits the settings configure."""
        return cls(
            s.max_message_bytes,
            s.max_candidates,
            s.reward_min,
            s.reward_max,
            s.max_context_features,
        )


def _text(lo: int, hi: int) -> Any:
    return Annotated[str, msgspec.Meta(min_length=lo, max_length=hi)]


def _typed_decoders(limits: Limits) -> tuple[Any, Any]:
    """msgspec decoders of contexts and rewards whose types hold every check of the
    Python path that one field can hold (the rest: :func:`_typed_context`). Integers stay
    within 64 bits and floats finite, as orjson reads them."""
    big = sys.float_info.max
    scalar: Any = INT_64 | Annotated[float, msgspec.Meta(ge=-big, le=big)] | bool
    features: Any = dict[_text(0, MAX_STRING), scalar | _text(0, MAX_STRING) | None]  # type: ignore[misc]
    stamp: Any = Annotated[float, msgspec.Meta(ge=0, le=big)] | None
    cands: Any = list[_text(1, MAX_STRING)]  # type: ignore[misc]
    bounded = Annotated[cands, msgspec.Meta(min_length=1, max_length=limits.max_candidates)]
    reward = Annotated[float, msgspec.Meta(ge=limits.reward_min, le=limits.reward_max)]
    ids = [("event_id", _text(1, MAX_EVENT_ID)), ("domain", str)]
    context = msgspec.defstruct(
        "TypedContext",
        [
            *ids,
            ("context", features),
            ("candidates", bounded),
            ("candidate_features", dict[str, features] | None, None),
            ("unit_id", _text(1, MAX_STRING) | None, None),
            ("timestamp", stamp, None),
            ("source", None, None),  # a message's own "source" key: the checked path's
            ("record_time", None, 0.0),  # likewise
        ],
        bases=(ContextEvent,),
    )
    rewards = msgspec.defstruct(
        "TypedReward",
        [
            *ids,
            ("reward", reward),
            ("timestamp", stamp, None),
            ("source", None, None),
            ("record_time", None, 0.0),
        ],
        bases=(RewardEvent,),
    )
    return msgspec.json.Decoder(context), msgspec.json.Decoder(rewards)


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
    ev = _typed(limits.typed[0], value, limits)
    if ev is not None and _typed_context(ev, key, limits.max_context_features):
        return ev
    return _checked_context(value, key, limits)


def _typed(decoder: Any, value: bytes | None, limits: Limits) -> Any:
    """The typed decode (module doc), or None where it refuses."""
    if value is None or len(value) > limits.max_message_bytes:
        return None
    try:
        return decoder.decode(value)
    except msgspec.MsgspecError:
        return None


def _known_domain(domain: str, key: bytes | None) -> bool:
    """Validated before and matching the key (else the checked path names what is wrong)."""
    encoded = _VALID_DOMAINS.get(domain)
    return encoded is not None and (key is None or key == encoded)


def _typed_context(ev: ContextEvent, key: bytes | None, max_features: int) -> bool:
    """The checks across fields that a typed decode leaves (module doc)."""
    if not _known_domain(ev.domain, key):
        return False
    cands, cf = ev.candidates, ev.candidate_features
    if len(set(cands)) != len(cands):
        return False
    n = len(ev.context)
    if cf is not None:
        if not cf.keys() <= set(cands):
            return False
        n += sum(len(f) for f in cf.values())
    return n <= max_features


def _checked_context(value: bytes | None, key: bytes | None, limits: Limits) -> ContextEvent:
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
    ev = _typed(limits.typed[1], value, limits)
    if ev is not None and _known_domain(ev.domain, key):
        return ev
    return _checked_reward(value, key, limits)


def _checked_reward(value: bytes | None, key: bytes | None, limits: Limits) -> RewardEvent:
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


_DECISIONS = msgspec.json.Encoder()


def encode_decision(decision: Decision) -> bytes:
    return _DECISIONS.encode(decision)
