"""The dead-letter topic: every message the service cannot process, unchanged, with why.

A dead letter is the original value and key, with headers naming the error code, a
human-readable reason, and where the message came from (source topic, partition, offset,
timestamp). It is produced through the decisions' :class:`~stream.delivery.Delivery`, so
it is retried until acknowledged, and a checkpoint (which flushes the producer before it
reads positions) never commits an offset past an unacknowledged dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from stream.delivery import Delivery

MAX_REASON = 512  # header size stays bounded whatever the input


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


def headers(code: str, reason: str, src: Source) -> list[tuple[str, str | bytes | None]]:
    return [
        ("error_code", code.encode()),
        ("error_reason", reason[:MAX_REASON].encode("utf-8", "replace")),
        ("source_topic", src.topic.encode()),
        ("source_partition", str(src.partition).encode()),
        ("source_offset", str(src.offset).encode()),
        ("source_timestamp", str(src.timestamp_ms).encode()),
    ]


def dead_letter(delivery: Delivery, topic: str, code: str, reason: str, src: Source) -> None:
    delivery.produce(src.value, src.key, topic=topic, headers=headers(code, reason, src))
