"""Test doubles for the Kafka clients and the checkpoint's Kafka side, shared by the unit
tests (no broker). Each keeps the method names and signatures of what it stands in for
(``confluent_kafka``'s Message, Consumer and Producer; :class:`~stream.kafka.delivery.
Delivery`; :class:`~stream.state.publisher.StatePublisher`) and records what it was asked
to do. Integration tests use a real broker, never these."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from stream.kafka.delivery import Headers
from stream.state.delta import Chain
from stream.state.publisher import Abandoned, PartitionMark, PublishFailed
from stream.state.records import Snapshot
from stream.state.topic import Head, Offsets

TP = tuple[str, int]
DeliveryReport = Callable[[KafkaError | None, Message], None]


class FakeMessage(Message):
    """A record as librdkafka hands it over, built by the test: a real
    ``confluent_kafka.Message`` (so the service's ``isinstance(m, Message)`` checks hold),
    with ``timestamp_ms`` a CreateTime stamp (without it, ``timestamp()`` is
    ``(TIMESTAMP_NOT_AVAILABLE, 0)``) and ``error`` set for an event such as the end of a
    partition. A field left None reads None, as on a real message."""

    def __init__(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: Headers | None = None,
        *,
        partition: int | None = None,
        offset: int | None = None,
        timestamp_ms: int | None = None,
        error: KafkaError | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            "topic": topic,
            "value": value,
            "key": key,
            "headers": headers,
            "partition": partition,
            "offset": offset,
            "error": error,
        }
        if timestamp_ms is not None:
            fields["timestamp"] = (TIMESTAMP_CREATE_TIME, timestamp_ms)
        # Message() takes no None for an integer field: an unset one is left out.
        super().__init__(**{k: v for k, v in fields.items() if v is not None})


class FakeConsumer:
    """A ``confluent_kafka.Consumer`` over a fixed assignment: ``positions`` maps each
    assigned (topic, partition) to its position. Records every commit's offsets
    (``committed``, as (topic, partition, offset)) and the partitions paused (``paused``);
    ``position_error``, when set, is raised by ``position``."""

    def __init__(self, positions: Mapping[TP, int] | None = None) -> None:
        self.positions = dict(positions or {})
        self.position_error: KafkaException | None = None
        self.committed: list[list[tuple[str, int, int]]] = []
        self.paused: set[TP] = set()

    @property
    def paused_topics(self) -> set[str]:
        """The topics with a partition paused."""
        return {topic for topic, _ in self.paused}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        if self.position_error is not None:
            raise self.position_error
        return [
            TopicPartition(tp.topic, tp.partition, self.positions[tp.topic, tp.partition])
            for tp in partitions
        ]

    def commit(
        self,
        message: Message | None = None,
        offsets: list[TopicPartition] | None = None,
        asynchronous: bool = True,
    ) -> list[TopicPartition] | None:
        """Commits ``offsets``, else ``message``'s offset + 1, else the positions."""
        if offsets is None:
            if message is not None:
                where = (message.topic() or "", message.partition() or 0)
                offsets = [TopicPartition(*where, (message.offset() or 0) + 1)]
            else:
                offsets = [TopicPartition(t, p, o) for (t, p), o in self.positions.items()]
        self.committed.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        return None if asynchronous else offsets

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}


class FakeProducer:
    """A ``confluent_kafka.Producer``: ``produce`` queues a record (a :class:`FakeMessage`),
    ``poll`` and ``flush`` report each queued one to its ``on_delivery`` with the error
    ``fate`` gives it (None: delivered, and kept in ``delivered``). ``limit``: a larger
    record is refused at ``produce``, as librdkafka refuses one over ``message.max.bytes``.
    Records queued when ``purge`` is called are reported purged at the next poll. A
    ``produce`` from inside a delivery callback fails the test."""

    def __init__(
        self,
        fate: Callable[[FakeMessage], KafkaError | None] | None = None,
        limit: int | None = None,
    ) -> None:
        self.fate = fate or (lambda msg: None)
        self.limit = limit
        # Each queued record, its delivery report, and the error forced on it (purged).
        self.queued: list[tuple[FakeMessage, DeliveryReport | None, KafkaError | None]] = []
        self.delivered: list[FakeMessage] = []
        self.in_callback = False

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: DeliveryReport | None = None,
        timestamp: int = 0,
        headers: Headers | None = None,
    ) -> None:
        assert not self.in_callback, "produce() called from inside a delivery callback"
        if self.limit is not None and len(value or b"") + len(key or b"") > self.limit:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        msg = FakeMessage(
            topic,
            value,
            key,
            headers,
            partition=partition if partition >= 0 else None,  # no partitioner here
            timestamp_ms=timestamp or int(time.time() * 1000),
        )
        self.queued.append((msg, on_delivery, None))

    def poll(self, timeout: float | None = None) -> int:
        queued, self.queued = self.queued, []
        self.in_callback = True
        try:
            for msg, report, forced in queued:
                err = forced or self.fate(msg)
                if err is None:
                    self.delivered.append(msg)
                if report is not None:
                    report(err, msg)
        finally:
            self.in_callback = False
        return len(queued)

    def flush(self, timeout: float | None = None) -> int:
        self.poll()
        return len(self.queued)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        if in_queue:
            purged = KafkaError(KafkaError._PURGE_QUEUE)
            self.queued = [(msg, report, purged) for msg, report, _ in self.queued]

    def __len__(self) -> int:
        return len(self.queued)


class FakeDelivery:
    """A :class:`~stream.kafka.delivery.Delivery` whose ``flush`` leaves ``unacknowledged``
    records outstanding; counts the calls to ``purge`` (``purged``)."""

    def __init__(self, unacknowledged: int = 0) -> None:
        self.unacknowledged = unacknowledged
        self.purged = 0

    def flush(self, timeout_s: float, stop_by: Callable[[], float] | None = None) -> int:
        return self.unacknowledged

    def purge(self) -> int:
        self.purged += 1
        return self.unacknowledged


class FakePublisher:
    """A :class:`~stream.state.publisher.StatePublisher`: each publish records its partition
    markers (``published``) and answers every domain with a new base chain. ``fail``: it
    raises PublishFailed instead. ``hold``: it waits (5 s at most) for that event first.
    As the real one does between records, a publish whose ``cancel`` is set raises
    Abandoned. Counts the calls to ``purge`` (``purged``) and to ``close`` (``closed``)."""

    def __init__(self, fail: bool = False, hold: threading.Event | None = None) -> None:
        self.fail = fail
        self.hold = hold
        self.published: list[dict[int, PartitionMark]] = []
        self.purged = self.closed = 0
        self.paced: list[bool] = []  # each publish's: paced while the loop decides beside it

    def publish(
        self,
        snap: Snapshot,
        domains: dict[str, tuple[int, Offsets]],
        markers: dict[int, PartitionMark],
        timeout_s: float,
        chains: Mapping[str, Chain] | None = None,
        cancel: threading.Event | None = None,
        deleted: Mapping[str, tuple[int, Head | None]] | None = None,
        paced: bool = False,
    ) -> dict[str, Chain]:
        self.paced.append(paced)
        if self.hold is not None:
            self.hold.wait(5)
        if cancel is not None and cancel.is_set():
            raise Abandoned("state topic: publish abandoned (partitions lost)")
        if self.fail:
            raise PublishFailed("state topic: records unacknowledged (timed out)")
        self.published.append(markers)
        return {d: Chain("base", 0, 1, 0, {}) for d in domains}

    def close(self, timeout_s: float = 5.0) -> None:
        self.closed += 1

    def purge(self) -> None:
        self.purged += 1
