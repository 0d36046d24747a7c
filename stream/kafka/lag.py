"""The service's figures that only Kafka knows, and the metrics topic's records."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer

log = logging.getLogger(__name__)


def consumer_lag(consumer: Consumer | None) -> dict[tuple[str, int], int]:
    """Messages behind the log end, per assigned partition (as of the last fetches)."""
    out: dict[tuple[str, int], int] = {}
    if consumer is None:
        return out
    try:
        for tp in consumer.position(consumer.assignment()):
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
    except KafkaException as exc:
        log.debug("consumer lag unavailable: %s", exc)
    return out


def send_metrics(producer: Producer | None, topic: str, events: list[dict[str, Any]]) -> None:
    """Produce the metrics events (keyed by domain); dropped, not waited for, when the
    producer's queue is full."""
    if producer is None:
        return
    for ev in events:
        try:
            producer.produce(topic, orjson.dumps(ev), ev["domain"].encode())
        except BufferError:
            log.warning("producer queue full: metrics event for %s dropped", ev["domain"])
