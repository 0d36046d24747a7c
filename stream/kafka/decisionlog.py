"""The decisions topic as the log of what was served.

A decision goes to partition ``p mod N`` of the decisions topic (N partitions), ``p`` being
its context's input partition, so one input partition's decisions are all in one place.
Each checkpoint records, per held input partition, a *mark*: an offset of that decisions
partition at or below every decision made after the checkpoint's input offsets. A restore
reads the decisions partition from the mark to its end and hands each replayed context the
decision already published for it, instead of deciding it again (possibly differently):
whatever the application was shown, its reward is credited to. docs/design.md, "A replay
never contradicts a published decision".
"""

from __future__ import annotations

import logging
import time
import uuid

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from stream.config import Settings
from stream.errors import KafkaClientError
from stream.kafka.clients import common_config
from stream.kafka.codec import Decision

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (domain, event_id)
_DECODER = msgspec.json.Decoder(Decision)


class DecisionLog:
    """Where an input partition's decisions go, and reading them back."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic_decisions
        self.n = 0  # partitions of the decisions topic, once connected

    def connect(self, producer: Producer, timeout_s: float = 15.0) -> None:
        """Learn the decisions topic's partition count (it must exist)."""
        try:
            md = producer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        except KafkaException as exc:
            err = exc.args[0]
            raise KafkaClientError(f"cannot read {self.topic}'s metadata: {err}") from exc
        if md is None or md.error is not None or not md.partitions:
            raise KafkaClientError(f"no topic {self.topic} (RL_TOPIC_DECISIONS)")
        self.n = len(md.partitions)

    def partition_of(self, input_partition: int) -> int:
        """The decisions partition of an input partition's decisions."""
        return input_partition % self.n if self.n and input_partition >= 0 else -1

    def end(self, consumer: Consumer, input_partition: int, timeout_s: float = 5.0) -> int | None:
        """The decisions partition's end now (None: unknown)."""
        q = self.partition_of(input_partition)
        if q < 0:
            return None
        try:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, q), timeout=timeout_s, cached=False
            )
        except KafkaException as exc:
            log.warning("%s[%d]: no end offset for a mark: %s", self.topic, q, exc)
            return None
        return int(high) if high >= 0 else None

    def replay(
        self, input_partition: int, start: int, limit: int, timeout_s: float = 60.0
    ) -> dict[Key, Decision]:
        """The decisions on ``input_partition``'s decisions partition from offset ``start``
        (< 0: its beginning) to its end, the newest ``limit`` at most: what the replay of a
        restored partition serves again. The end is where the consumer is told it reached
        it (the embedded broker answers ListOffsets with the last batch's first offset)."""
        q = self.partition_of(input_partition)
        out: dict[Key, Decision] = {}
        if q < 0:
            return out
        conf = common_config(self.settings)
        conf.update(
            {
                "group.id": f"bandit-stream-decisions-{uuid.uuid4().hex[:12]}",  # assign only
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",  # a mark below the retained log
            }
        )
        conf.update(self.settings.kafka_extra)
        consumer = Consumer(conf)
        bad = 0
        try:
            consumer.assign(
                [TopicPartition(self.topic, q, start if start >= 0 else OFFSET_BEGINNING)]
            )
            deadline = time.monotonic() + timeout_s
            while True:
                if time.monotonic() > deadline:
                    raise KafkaClientError(f"reading {self.topic}[{q}] took over {timeout_s} s")
                msgs = consumer.consume(1000, timeout=0.5)
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("reading %s[%d]: %s", self.topic, q, err.str())
                        continue
                    try:
                        d = _DECODER.decode(m.value() or b"")
                    except msgspec.MsgspecError:
                        bad += 1
                        continue
                    key = (d.domain, d.event_id)
                    if key not in out:  # the first copy is the one consumers saw first
                        out[key] = d
                last = msgs[-1].error() if msgs else None
                if last is not None and last.code() == KafkaError._PARTITION_EOF:
                    break
        finally:
            consumer.close()
        if bad:
            log.warning("%s[%d]: %d records are not decisions (ignored)", self.topic, q, bad)
        if len(out) > limit:
            for k in list(out)[: len(out) - limit]:
                del out[k]
            log.warning(
                "%s[%d]: over %d decisions since the checkpoint; the oldest may be decided "
                "again on replay",
                self.topic,
                q,
                limit,
            )
        return out
