"""Decisions out, input offsets stored: a batch's offsets are stored only once every
decision it produced is acknowledged by the broker, in batch order.

A failed delivery is produced again, never skipped (the producer is idempotent and
ordered); a full local queue is backpressure: poll and wait, never drop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class BatchAck:
    """Input offsets of one consumed batch and the count of decisions still in flight."""

    __slots__ = ("offsets", "outstanding", "_retry")

    def __init__(
        self,
        offsets: dict[tuple[str, int], int],
        retry: Callable[[Message, DeliveryCallback], None],
    ) -> None:
        self.offsets = offsets  # (topic, partition) -> last offset in the batch
        self.outstanding = 0
        self._retry = retry

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.outstanding -= 1
        else:
            self._retry(msg, self.on_delivery)


class Delivery:
    """Owns the decisions producer's acknowledgements and the consumer's offset store."""

    def __init__(
        self, producer: Producer, topic: str, on_retry: Callable[[Message], None] | None = None
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.retries = 0
        self._on_retry = on_retry
        self._inflight: deque[BatchAck] = deque()

    def batch(self, offsets: dict[tuple[str, int], int]) -> BatchAck:
        """Start tracking a consumed batch (in consumption order)."""
        ack = BatchAck(offsets, self._reproduce)
        self._inflight.append(ack)
        return ack

    def produce(self, value: bytes, key: bytes, ack: BatchAck) -> None:
        ack.outstanding += 1
        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=ack.on_delivery)
                return
            except BufferError:
                # Backpressure: the local queue is full; serve delivery reports and wait.
                self.producer.poll(0.05)

    def _reproduce(self, msg: Message, on_delivery: DeliveryCallback) -> None:
        self.retries += 1
        if self._on_retry is not None:
            self._on_retry(msg)
        # This runs inside poll(); produce() may raise BufferError while the queue is full.
        while True:
            try:
                self.producer.produce(
                    str(msg.topic()), msg.value(), msg.key(), on_delivery=on_delivery
                )
                return
            except BufferError:
                time.sleep(0.01)

    def store_done(self, consumer: Consumer) -> None:
        """Store the offsets of every leading batch whose decisions are all acknowledged."""
        while self._inflight and self._inflight[0].outstanding <= 0:
            ack = self._inflight.popleft()
            if not ack.offsets:
                continue
            tps = [TopicPartition(t, p, o + 1) for (t, p), o in ack.offsets.items()]
            try:
                consumer.store_offsets(offsets=tps)
            except KafkaException as exc:
                # A partition revoked meanwhile: its new owner re-reads from the last commit.
                log.debug("store_offsets: %s", exc)
