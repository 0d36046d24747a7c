"""The events the service reads and writes, as types (the wire contract: docs/events.md)."""

from __future__ import annotations

from typing import Any

import msgspec

Scalar = float | int | bool | str | None


class ContextEvent(msgspec.Struct):
    event_id: str
    domain: str
    context: dict[str, Scalar]
    candidates: list[str]
    candidate_features: dict[str, dict[str, Scalar]] | None = None
    unit_id: str | None = None
    timestamp: float | None = None
    # The consumed message (or its Source), for a dead letter: set by the processor after
    # decoding, over anything a message's own "source" key held.
    source: Any = None
    # Its record's time (Kafka's timestamp, epoch seconds): set by whoever read it, over
    # anything a message's own "record_time" key held. Windows are judged by it.
    record_time: float = 0.0


class RewardEvent(msgspec.Struct):
    event_id: str
    domain: str
    reward: float
    timestamp: float | None = None
    source: Any = None  # as ContextEvent.source
    record_time: float = 0.0  # as ContextEvent.record_time


class Decision(msgspec.Struct, gc=False):
    """A decision as the decisions topic carries it (fields in docs/events.md)."""

    event_id: str
    domain: str
    action: str
    probability: float
    probabilities: dict[str, float]
    policy: str
    policy_version: int
    variant: str
    timestamp: float
    latency_ms: float
