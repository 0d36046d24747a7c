"""Reading the state topic back: every key's newest record (never an older owner's late
write over a newer one's), and each partition's restore plan (format and rules:
:mod:`stream.state.topic`)."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from stream.config import Settings
from stream.errors import CorruptCheckpoint, StateTopicError
from stream.kafka.clients import common_config
from stream.kafka.topics import MAX_RECORD_BYTES
from stream.state.delta import MAX_DELTAS, delta_key, is_delta_key, legacy_delta_key
from stream.state.topic import (
    EPOCH_HEADER,
    MARKER_PREFIX,
    DomainRecord,
    Marker,
    Offsets,
    decode_domain,
    decode_marker,
    follow,
    marker_key,
    record_epoch,
)

log = logging.getLogger(__name__)


@dataclass
class PartitionPlan:
    """How to restore one partition from the topic."""

    records: list[DomainRecord]
    start: Offsets  # where to seek the contexts and rewards partitions
    # domain -> offsets from which its messages are not yet in its restored state
    valid_from: dict[str, Offsets]
    newest: Offsets  # the furthest point any record or the marker reflects
    epoch: int = 0  # the newest writer's epoch among them
    mark: int = OFFSET_BEGINNING  # where to read the decisions partition from
    complete: bool = True  # every domain the marker lists was restored to its head


class StateRecords:
    """The newest record per key of the state topic, read to its end."""

    def __init__(self, values: dict[str, bytes], topics: tuple[str, str]) -> None:
        self.values = values
        self.topics = topics
        self.epochs: dict[str, int] = {}  # key -> the epoch of its newest write read

    def read(self, key: str, value: bytes | None, epoch: int) -> None:
        """The next record of the topic (None: a tombstone), written under ``epoch``: an
        older owner's write after a newer one's is ignored."""
        if epoch < self.epochs.get(key, 0):
            return
        self.epochs[key] = epoch
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value

    def _chain(self, rec: DomainRecord) -> DomainRecord:
        """The base ``rec`` with its chain's deltas applied, up to the first that is
        missing, stale (another base's) or damaged."""
        if not rec.base:
            return rec
        for k in range(1, MAX_DELTAS + 1):
            name = (
                legacy_delta_key(rec.domain, k)
                if rec.schema == 1
                else delta_key(rec.domain, rec.base, k)
            )
            raw = self.values.get(name)
            if raw is None:
                break
            try:
                d = decode_domain(raw, self.topics)
                if (d.base, d.seq, d.domain, d.partition) != (
                    rec.base,
                    k,
                    rec.domain,
                    rec.partition,
                ):
                    break  # a link of an older chain, its tombstone not written or compacted
                rec = follow(rec, d)
            except CorruptCheckpoint as exc:
                log.error("state topic: delta %d of %r: %s (ignored)", k, rec.domain, exc)
                break
        return rec

    def plan(self, partition: int) -> PartitionPlan | None:
        """The restore plan for ``partition``; None when the topic knows nothing of it."""
        marker: Marker | None = None
        raw = self.values.get(marker_key(partition))
        if raw is not None:
            try:
                marker = decode_marker(raw)
                if marker.partition != partition:
                    marker = None
            except CorruptCheckpoint as exc:
                log.error("state topic: partition %d marker: %s (ignored)", partition, exc)
        records = []
        for key, value in self.values.items():
            if key.startswith(MARKER_PREFIX) or is_delta_key(key):
                continue
            try:
                rec = decode_domain(value, self.topics)
            except CorruptCheckpoint as exc:
                log.error("state topic: record of %r: %s (ignored)", key, exc)
                continue
            if rec.partition == partition and rec.domain == key and rec.seq == 0:
                records.append(self._chain(rec))
        if marker is None and not records:
            return None
        heads = marker.heads if marker is not None else None
        valid_from: dict[str, Offsets] = {}
        # Where decisions of replayed contexts may start: a vouched domain is read on from
        # the marker's offsets (its mark), any other from its own record's.
        marks = [marker.mark] if marker is not None else []
        for r in records:
            vouched = marker is not None and (heads is None or heads.get(r.domain) == r.head)
            if not vouched:
                marks.append(r.mark)
            valid_from[r.domain] = (
                (max(r.offsets[0], marker.offsets[0]), max(r.offsets[1], marker.offsets[1]))
                if vouched and marker is not None
                else r.offsets
            )
        found = {r.domain for r in records}
        lost = sorted(set(heads or {}) - found)
        # Behind its head (a record newer than the marker is not: its checkpoint's marker
        # was never written).
        unreached = sorted(
            r.domain
            for r in records
            if marker is not None
            and heads is not None
            and r.domain in heads
            and heads[r.domain] != r.head
            and (r.offsets[0] < marker.offsets[0] or r.offsets[1] < marker.offsets[1])
        )
        if lost or unreached:
            log.error(
                "state topic: partition %d: %s; those domains restart from what the topic "
                "still holds",
                partition,
                "; ".join(
                    x
                    for x in (
                        f"no record of {', '.join(lost[:5])}" if lost else "",
                        f"chains of {', '.join(unreached[:5])} broken" if unreached else "",
                    )
                    if x
                ),
            )
        if marker is None or lost:
            # The first publish of this partition never completed, or a domain it held is
            # gone: a domain without a record may have earlier messages.
            start: Offsets = (OFFSET_BEGINNING, OFFSET_BEGINNING)
            mark = OFFSET_BEGINNING
        else:
            start = (
                min([marker.offsets[0], *(v[0] for v in valid_from.values())]),
                min([marker.offsets[1], *(v[1] for v in valid_from.values())]),
            )
            mark = min(marks)
        every = [r.offsets for r in records] + ([marker.offsets] if marker else [])
        newest = (max(o[0] for o in every), max(o[1] for o in every))
        epoch = max([r.epoch for r in records] + ([marker.epoch] if marker else []))
        complete = not lost and not unreached
        return PartitionPlan(records, start, valid_from, newest, epoch, mark, complete)


def _epoch_header(headers: Any) -> int | None:
    for k, v in headers or ():
        if k == EPOCH_HEADER:
            try:
                return int(v)
            except (TypeError, ValueError):
                return None
    return None


def read_state_topic(settings: Settings, timeout_s: float = 30.0) -> StateRecords:
    """Read every partition of the state topic from its start to its current end."""
    topic = settings.topic_state
    conf = common_config(settings)
    conf.update(
        {
            "group.id": f"bandit-stream-restore-{uuid.uuid4().hex[:12]}",  # assign only
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": MAX_RECORD_BYTES,
            "max.partition.fetch.bytes": MAX_RECORD_BYTES,
            "receive.message.max.bytes": MAX_RECORD_BYTES + 1024 * 1024,
        }
    )
    conf.update(settings.kafka_extra)
    consumer = Consumer(conf)
    records = StateRecords({}, (settings.topic_contexts, settings.topic_rewards))
    try:
        md = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if md is None or md.error is not None:
            raise StateTopicError(f"no topic {topic}: {md.error if md is not None else ''}")
        todo: dict[int, int] = {}
        assign = []
        for p in md.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=timeout_s, cached=False
            )
            if high > low:
                todo[p] = high
                assign.append(TopicPartition(topic, p, low))
        if not todo:
            return records
        consumer.assign(assign)
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise StateTopicError(f"reading {topic} took over {timeout_s} s")
            for m in consumer.consume(500, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() != -191:  # _PARTITION_EOF: fine, checked below
                        log.warning("reading %s: %s", topic, err.str())
                    continue
                key, part, offset = m.key(), m.partition() or 0, m.offset() or 0
                if key is not None:
                    value = m.value()
                    epoch = _epoch_header(m.headers())
                    if epoch is None:  # format 1
                        epoch = 0 if value is None else record_epoch(value)
                    records.read(key.decode("utf-8", "replace"), value, epoch)
                if offset + 1 >= todo.get(part, 0):
                    todo.pop(part, None)
            for tp in consumer.position([TopicPartition(topic, p) for p in list(todo)]):
                if tp.offset >= todo.get(tp.partition, 1 << 62):
                    todo.pop(tp.partition, None)
    except KafkaException as exc:
        raise StateTopicError(f"reading {topic}: {exc.args[0]}") from exc
    finally:
        consumer.close()
    return records
