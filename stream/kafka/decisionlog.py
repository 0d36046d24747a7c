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
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

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
    ) -> tuple[dict[Key, Decision], int]:
        """What a restored partition's replay needs: the decisions on its decisions
        partition from offset ``start`` to the end (the newest ``limit`` at most), and the
        contexts partition's end now (no context past it was decided before)."""
        q = self.partition_of(input_partition)
        out: dict[Key, Decision] = {}
        if q < 0:
            return out, 0
        conf = common_config(self.settings)
        conf.update(
            {
                "group.id": f"bandit-stream-decisions-{uuid.uuid4().hex[:12]}",  # assign only
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        conf.update(self.settings.kafka_extra)
        consumer = Consumer(conf)
        try:
            contexts = TopicPartition(self.settings.topic_contexts, input_partition)
            _, contexts_end = consumer.get_watermark_offsets(
                contexts, timeout=timeout_s, cached=False
            )
            tp = TopicPartition(self.topic, q)
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
            first = max(low, start) if start >= 0 else low
            if high <= first:
                return out, contexts_end
            consumer.assign([TopicPartition(self.topic, q, first)])
            deadline = time.monotonic() + timeout_s
            bad = 0
            done = False
            while not done:
                if time.monotonic() > deadline:
                    raise KafkaClientError(f"reading {self.topic}[{q}] took over {timeout_s} s")
                for m in consumer.consume(1000, timeout=0.5):
                    err = m.error()
                    if err is not None:
                        if err.code() == -191 and (m.offset() or 0) >= high:  # _PARTITION_EOF
                            done = True
                        continue
                    try:
                        d = _DECODER.decode(m.value() or b"")
                    except msgspec.MsgspecError:
                        bad += 1
                    else:
                        key = (d.domain, d.event_id)
                        if key not in out:  # the first copy is the one consumers saw first
                            out[key] = d
                    if (m.offset() or 0) + 1 >= high:
                        done = True
            if bad:
                log.warning("%s[%d]: %d records are not decisions (ignored)", self.topic, q, bad)
        finally:
            consumer.close()
        if len(out) > limit:
            keys = list(out)[: len(out) - limit]
            for k in keys:
                del out[k]
            log.warning(
                "%s[%d]: over %d decisions since the checkpoint; the oldest may be decided "
                "again on replay",
                self.topic,
                q,
                limit,
            )
        return out, contexts_end
