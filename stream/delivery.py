"""Decisions and dead letters out: a failed delivery is produced again, never skipped (the
producer is idempotent and ordered); a full local queue is backpressure: poll and wait,
never drop.

Input offsets are not tracked here: a checkpoint flushes the producer before it reads the
consumer's positions, so every offset it commits has its decisions acknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import KafkaError, Message, Producer


class Delivery:
    """Produces decisions and re-produces any the broker did not acknowledge."""

    def __init__(
        self, producer: Producer, topic: str, on_retry: Callable[[Message], None] | None = None
    ) -> None:
        self.producer = producer
        self.topic = topic
        self._on_retry = on_retry

    def produce(
        self,
        value: bytes | None,
        key: bytes | None,
        topic: str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Produce to ``topic`` (default: the decisions topic), waiting while the queue is full."""
        while True:
            try:
                self.producer.produce(
                    topic or self.topic, value, key, headers=headers, on_delivery=self._on_delivery
                )
                return
            except BufferError:
                # Backpressure: the local queue is full; serve delivery reports and wait.
                self.producer.poll(0.05)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        if self._on_retry is not None:
            self._on_retry(msg)
        # This runs inside poll()/flush(); produce() may raise BufferError while full.
        while True:
            try:
                self.producer.produce(
                    str(msg.topic()),
                    msg.value(),
                    msg.key(),
                    headers=msg.headers(),
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                time.sleep(0.01)
