"""The dead-letter topic: every message the service cannot process, unchanged, with why.

A dead letter is the original value and key, with headers naming the error code, a
human-readable reason, and where the message came from (source topic, partition, offset,
timestamp). It is produced through the decisions' :class:`~stream.kafka.delivery.Delivery`, so
it is retried until acknowledged, and a checkpoint (which flushes the producer before it
reads positions) never commits an offset past an unacknowledged dead letter. A message
too large for the dead-letter topic is cut, never lost to a crash (:class:`DeadLetters`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message

from stream.errors import DeliveryError
from stream.kafka.delivery import Delivery, Headers

MAX_REASON = 512  # header size stays bounded whatever the input
KEY_CUT = 1024  # a cut dead letter keeps this much of its key
HEADROOM = 8192  # headers and record framing within a cut dead letter's budget


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from, and its original bytes."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, m: Message) -> Source:
        _kind, ts = m.timestamp()
        return cls(m.topic() or "", m.partition() or 0, m.offset() or 0, ts, m.key(), m.value())

    @classmethod
    def of_reward(cls, m: Any, event_id: str, domain: str, reward: float) -> Source:
        """A reward kept for later (held for its context): where it came from and only
        what it says, re-encoded; never its raw bytes, which may be up to a megabyte."""
        value = orjson.dumps({"event_id": event_id, "domain": domain, "reward": reward})
        if not isinstance(m, Message):
            return cls(m.topic, m.partition, m.offset, m.timestamp_ms, domain.encode(), value)
        _kind, ts = m.timestamp()
        return cls(m.topic() or "", m.partition() or 0, m.offset() or 0, ts, domain.encode(), value)

    def to_json(self) -> list[Any]:
        """For checkpoints (early rewards): the value was valid JSON, hence UTF-8."""
        return [
            self.topic,
            self.partition,
            self.offset,
            self.timestamp_ms,
            None if self.key is None else self.key.decode("utf-8", "replace"),
            None if self.value is None else self.value.decode("utf-8", "replace"),
        ]

    @classmethod
    def from_json(cls, obj: Any) -> Source:
        topic, part, off, ts, key, value = obj
        return cls(
            str(topic),
            int(part),
            int(off),
            int(ts),
            None if key is None else str(key).encode(),
            None if value is None else str(value).encode(),
        )


def headers(code: str, reason: str, src: Source) -> Headers:
    return [
        ("error_code", code.encode()),
        ("error_reason", reason[:MAX_REASON].encode("utf-8", "replace")),
        ("source_topic", src.topic.encode()),
        ("source_partition", str(src.partition).encode()),
        ("source_offset", str(src.offset).encode()),
        ("source_timestamp", str(src.timestamp_ms).encode()),
    ]


def exception_headers(exc: BaseException) -> Headers:
    """The type and message of the exception behind an ``internal_error``."""
    return [
        ("exception_type", type(exc).__name__.encode()),
        ("exception_message", str(exc)[:MAX_REASON].encode("utf-8", "replace")),
    ]


class DeadLetters:
    """Produces dead letters that never fail for their size.

    A message too large for the dead-letter topic is cut: first its value to
    ``max_record_bytes`` (and its key to 1 KiB), then, if the topic refuses even that,
    to no value at all; the headers ``value_truncated`` and ``original_size`` say so, and
    the source headers locate the original. Only a dead letter refused without its value
    raises (:class:`~stream.errors.DeliveryError`: the topic itself is unusable).
    """

    def __init__(self, delivery: Delivery, topic: str, max_record_bytes: int) -> None:
        self.delivery = delivery
        self.topic = topic
        self.max_record_bytes = max_record_bytes
        self.truncated = 0

    def send(self, code: str, reason: str, src: Source, extra: Headers | None = None) -> None:
        size = len(src.value or b"") + len(src.key or b"")
        self._produce(code, reason, src, extra or [], 1 if size > self.max_record_bytes else 0)

    def _produce(self, code: str, reason: str, src: Source, extra: Headers, cut: int) -> None:
        hdrs = headers(code, reason, src) + extra
        key, value = src.key, src.value
        if cut:
            self.truncated += 1
            hdrs += [
                ("value_truncated", b"true"),
                ("original_size", str(len(value or b"")).encode()),
            ]
            key = None if key is None else key[:KEY_CUT]
            value = None if cut > 1 or value is None else value[: self._value_room(key)]
        self.delivery.produce(
            value,
            key,
            topic=self.topic,
            headers=hdrs,
            on_refused=partial(self._refused, code, reason, src, extra, cut),
        )

    def _value_room(self, key: bytes | None) -> int:
        return max(0, self.max_record_bytes - HEADROOM - len(key or b""))

    def _refused(
        self, code: str, reason: str, src: Source, extra: Headers, cut: int, err: KafkaError
    ) -> None:
        if cut >= 2:
            raise DeliveryError(
                f"{self.topic} refused a dead letter without its value: {err.str()}", err.code()
            )
        self._produce(code, reason, src, extra, cut + 1)
