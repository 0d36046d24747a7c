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
from typing import Any

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

_DECODER = msgspec.json.Decoder(Decision)
# Every decision names the context it answers: a replay matches decisions to contexts by
# position, so a reused event id or a producer's second copy is never taken for another.
CONTEXT_HEADER = "context"
SEEN_FRESH_S = 10.0  # an end read beside the loop serves as a mark this long


class DecisionLog:
    """Where an input partition's decisions go, and reading them back."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic_decisions
        self.n = 0  # partitions of the decisions topic, once connected
        # Decisions partition -> (an end read beside the loop, when): any end read earlier
        # is at or below every decision made later, so it serves as a mark without a
        # request while it is recent (an old one would make a restore read that much more).
        self._seen: dict[int, tuple[int, float]] = {}

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

    def saw_end(self, q: int, end: int) -> None:
        """Note decisions partition ``q``'s end as read (by another thread) just now: the
        latest answer, lower too (a topic created again starts from 0)."""
        if end >= 0:
            self._seen[q] = (end, time.monotonic())

    def end(self, consumer: Consumer, input_partition: int, timeout_s: float = 5.0) -> int | None:
        """A mark for ``input_partition``: the decisions partition's end as last seen
        beside the loop, else asked now (None: unknown)."""
        q = self.partition_of(input_partition)
        if q < 0:
            return None
        seen = self._seen.get(q)
        if seen is not None and time.monotonic() - seen[1] <= SEEN_FRESH_S:
            return seen[0]
        try:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, q), timeout=timeout_s, cached=False
            )
        except KafkaException as exc:
            log.warning("%s[%d]: no end offset for a mark: %s", self.topic, q, exc)
            return None
        return int(high) if high >= 0 else None

    def replay(
        self, input_partition: int, start: int, first: int, limit: int, stall_s: float = 30.0
    ) -> dict[int, Decision]:
        """The decisions of ``input_partition``'s contexts at offset ``first`` or later, by
        their context's offset, read from offset ``start`` of its decisions partition (< 0:
        its beginning) to its end; the newest ``limit`` at most. The end is where the
        consumer is told it reached it (the embedded broker answers ListOffsets with its
        last batch's first offset); a read that makes no progress for ``stall_s`` raises."""
        q = self.partition_of(input_partition)
        out: dict[int, Decision] = {}
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
        dropped = unmarked = 0
        try:
            at = start if start >= 0 else OFFSET_BEGINNING
            consumer.assign([TopicPartition(self.topic, q, at)])
            progress = time.monotonic()
            while True:
                msgs = consumer.consume(1000, timeout=0.5)
                if msgs:
                    progress = time.monotonic()
                elif time.monotonic() - progress > stall_s:
                    raise KafkaClientError(f"reading {self.topic}[{q}] stalled for {stall_s} s")
                for m in msgs:
                    if m.error() is not None:
                        continue
                    where = context_of(m.headers())
                    if where is None:
                        unmarked += 1  # a decision of before this header: decided again
                        continue
                    if where[0] != input_partition or where[1] < first or where[1] in out:
                        continue  # another partition's, before the replay, or a copy
                    try:
                        out[where[1]] = _DECODER.decode(m.value() or b"")
                    except msgspec.MsgspecError:
                        continue
                    if len(out) > limit:  # the oldest go: decided again, in bounded memory
                        del out[next(iter(out))]
                        dropped += 1
                last = msgs[-1].error() if msgs else None
                if last is not None and last.code() == KafkaError._PARTITION_EOF:
                    break
        finally:
            consumer.close()
        if dropped:
            log.error(
                "%s[%d]: over %d decisions since the checkpoint (RL_MAX_PENDING): the %d "
                "oldest are decided again on replay, and may differ from what was served",
                self.topic,
                q,
                limit,
                dropped,
            )
        if unmarked:
            log.info("%s[%d]: %d decisions without a context position", self.topic, q, unmarked)
        return out


def context_header(partition: int, offset: int) -> list[tuple[str, str | bytes | None]]:
    """The header naming the context a decision answers (its input partition, offset)."""
    return [(CONTEXT_HEADER, b"%d:%d" % (partition, offset))]


def context_of(headers: Any) -> tuple[int, int] | None:
    """The context position a decision record's headers name (None: none)."""
    for k, v in headers or ():
        if k == CONTEXT_HEADER and isinstance(v, bytes):
            try:
                p, _, off = v.partition(b":")
                return int(p), int(off)
            except ValueError:
                return None
    return None
