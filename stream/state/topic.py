"""Domain snapshots on the compacted state topic: restore after losing the machine.

Every checkpoint, after its SQLite transaction commits, publishes (see :class:`StatePublisher`):

1. one record per domain that changed since its last published record: its policy
   states, its pending decisions and early rewards, and the input offsets of its
   partition that the state reflects; either whole (a base, key = the domain) or as a
   delta on the domain's chain (key ``<domain>#<k>``: only the rows that changed, see
   :mod:`stream.state.delta`);
2. once every one of those records is acknowledged, tombstones of the chains that new
   bases replaced and one marker per held partition, key ``#partition/<p>`` (never a
   valid domain name), carrying that checkpoint's offsets.

A marker at offsets M says: every domain of the partition that changed before M has its
newest state in a record at offsets <= M, so its state as of M is that record. A domain's
state is therefore valid from ``max(record offsets, marker offsets)`` on, which is where a
restorer starts applying that domain's messages (``StateRecords.plan``). A crash between
1 and 2 leaves some records newer than the marker; each then counts from its own offsets.

Records are a small binary frame, never pickle: magic, a JSON header (schema, domain,
partition, offsets, policy metadata, array descriptors, pending decisions, early rewards,
SHA-256 of the rest) and the arrays' raw bytes (dtypes from the checkpoint allow-list).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from numpy.typing import NDArray

from stream.config import Settings
from stream.errors import CorruptCheckpoint
from stream.kafka.clients import common_config
from stream.state.delta import (
    MAX_DELTAS,
    ArrayKey,
    Parts,
    apply_parts,
    chunk_rows,
    delta_key,
    is_delta_key,
    rows_of,
)
from stream.state.framing import frame, unframe
from stream.state.store import Snapshot

log = logging.getLogger(__name__)

MAGIC = b"BSS1"
SCHEMA = 1
MARKER_PREFIX = "#partition/"
# Policy states with long histories and many pending decisions exceed Kafka's 1 MB
# default; the state topic is created with this limit (and the clients configured so).
MAX_RECORD_BYTES = 64 * 1024 * 1024

Offsets = tuple[int, int]  # (next contexts offset, next rewards offset) of one partition


def marker_key(partition: int) -> str:
    return f"{MARKER_PREFIX}{partition}"


def encode_domain(
    snap: Snapshot,
    domain: str,
    partition: int,
    offsets: Offsets,
    pending: list[Any],
    base: str = "",
    seq: int = 0,
    parts: Parts | None = None,
) -> bytes:
    """One domain's record: its policies, pending decisions and early rewards. With
    ``seq`` > 0 it is link ``seq`` of base ``base``'s chain, and the arrays in ``parts``
    carry only their listed chunks (see :mod:`stream.state.delta`)."""
    arrays: list[list[Any]] = []
    chunks: list[bytes] = []
    roles: dict[str, Any] = {}
    # A domain may have only early rewards (no policy yet): then it has no roles.
    for role, (meta, arrs) in sorted(snap.domains.get(domain, {}).items()):
        roles[role] = meta
        for name in sorted(arrs):
            dtype, shape, b = frame(arrs[name], f"{domain}/{role}/{name}")
            sent = None if parts is None else parts.get((role, name))
            if sent is None:
                arrays.append([role, name, dtype, shape, len(b)])
                chunks.append(b)
                continue
            rows = chunk_rows(arrs[name])
            row = len(b) // max(1, shape[0])
            part = b"".join(b[c * rows * row : (c * rows + rows) * row] for c in sent)
            arrays.append([role, name, dtype, shape, len(part), rows, sent])
            chunks.append(part)
    meta = snap.meta
    header = {
        "schema": SCHEMA,
        "kind": "delta" if seq else "domain",
        "domain": domain,
        "partition": partition,
        "offsets": list(offsets),
        "base": base,
        "seq": seq,
        "created": time.time(),
        "features": meta.get("features"),
        "info": meta.get("domains", {}).get(domain, {}),
        "policies": roles,
        "arrays": arrays,
        "pending": pending,
        "early": [e for e in meta.get("early_rewards", []) if e[0] == domain],
    }
    body = b"".join(chunks)
    head = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(head + body).digest()
    return MAGIC + struct.pack("<I", len(head)) + digest + head + body


def encode_marker(partition: int, offsets: Offsets) -> bytes:
    return orjson.dumps(
        {
            "schema": SCHEMA,
            "kind": "partition",
            "partition": partition,
            "offsets": list(offsets),
            "created": time.time(),
        }
    )


@dataclass
class DomainRecord:
    domain: str
    partition: int
    offsets: Offsets
    snapshot: Snapshot  # this domain alone, in the checkpoint's own form (for restore())
    base: str = ""  # the chain's base id ("" in records of before deltas)
    seq: int = 0  # 0: a base; k: the chain's k-th delta
    # A delta's arrays sent in part: (shape, rows per chunk, chunks, their rows)
    parts: dict[ArrayKey, tuple[list[int], int, list[int], NDArray[Any]]] = field(
        default_factory=dict
    )


def _offsets(obj: Any) -> Offsets:
    if (
        not isinstance(obj, list)
        or len(obj) != 2
        or not all(isinstance(o, int) and o >= -2 for o in obj)
    ):
        raise CorruptCheckpoint(f"bad offsets {obj!r}")
    return int(obj[0]), int(obj[1])


def decode_domain(value: bytes, topics: tuple[str, str]) -> DomainRecord:
    """Parse and validate a domain record or delta; raises :class:`CorruptCheckpoint`."""
    if len(value) < 40 or value[:4] != MAGIC:
        raise CorruptCheckpoint("not a state record")
    (n,) = struct.unpack("<I", value[4:8])
    digest, head, body = value[8:40], value[40 : 40 + n], value[40 + n :]
    if len(head) != n or hashlib.sha256(head + body).digest() != digest:
        raise CorruptCheckpoint("state record fails its digest check")
    try:
        h = orjson.loads(head)
        seq = int(h.get("seq", 0))
        if h.get("schema") != SCHEMA or h.get("kind") != ("delta" if seq else "domain"):
            raise CorruptCheckpoint(f"state record schema {h.get('schema')!r} not {SCHEMA}")
        domain, partition = str(h["domain"]), int(h["partition"])
        offsets = _offsets(h["offsets"])
        roles: dict[str, Any] = {r: (m, {}) for r, m in h["policies"].items()}
        parts: dict[ArrayKey, tuple[list[int], int, list[int], NDArray[Any]]] = {}
        pos = 0
        for role, name, dtype, shape, size, *part in h["arrays"]:
            chunk = body[pos : pos + size]
            pos += size
            where = f"{domain}/{role}/{name}"
            if not part:
                roles[role][1][name] = unframe(dtype, shape, chunk, where)
                continue
            rows, sent = int(part[0]), [int(c) for c in part[1]]
            if not seq or rows < 1 or not shape:
                raise CorruptCheckpoint(f"{where}: chunks outside a delta")
            got = [rows_of(sent, rows, shape[0]), *shape[1:]]
            parts[(role, name)] = (shape, rows, sent, unframe(dtype, got, chunk, where))
        if pos != len(body):
            raise CorruptCheckpoint("state record has trailing bytes")
        meta = {
            "features": h["features"],
            "domains": {domain: h["info"]},
            "early_rewards": h["early"],
        }
        ctx, rew = topics
        where_at = {(ctx, partition): offsets[0], (rew, partition): offsets[1]}
        snap = Snapshot({domain: roles} if roles else {}, h["pending"], where_at, meta)
        base = str(h.get("base", ""))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpoint(f"malformed state record: {exc}") from exc
    return DomainRecord(domain, partition, offsets, snap, base, seq, parts)


def follow(prev: DomainRecord, delta: DomainRecord) -> DomainRecord:
    """``prev`` (a base or its chain so far) with the next link applied."""
    before = prev.snapshot.domains.get(prev.domain, {})
    roles = delta.snapshot.domains.get(delta.domain, {})
    for (role, name), (shape, rows, chunks, data) in delta.parts.items():
        old = before.get(role, (None, {}))[1].get(name)
        where = f"{delta.domain}/{role}/{name}"
        if old is None or role not in roles:
            raise CorruptCheckpoint(f"{where}: delta of an array its base lacks")
        roles[role][1][name] = apply_parts(old, shape, rows, chunks, data, where)
    return DomainRecord(
        delta.domain, delta.partition, delta.offsets, delta.snapshot, delta.base, delta.seq
    )


def decode_marker(value: bytes) -> tuple[int, Offsets]:
    try:
        h = orjson.loads(value)
        if h.get("schema") != SCHEMA or h.get("kind") != "partition":
            raise CorruptCheckpoint("not a partition marker")
        return int(h["partition"]), _offsets(h["offsets"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptCheckpoint(f"malformed partition marker: {exc}") from exc


@dataclass
class PartitionPlan:
    """How to restore one partition from the topic."""

    records: list[DomainRecord]
    start: Offsets  # where to seek the contexts and rewards partitions
    # domain -> offsets from which its messages are not yet in its restored state
    valid_from: dict[str, Offsets]
    newest: Offsets  # the furthest point any record or the marker reflects


class StateRecords:
    """The newest record per key of the state topic, read to its end."""

    def __init__(self, values: dict[str, bytes], topics: tuple[str, str]) -> None:
        self.values = values
        self.topics = topics

    def _chain(self, rec: DomainRecord) -> DomainRecord:
        """The base ``rec`` with its chain's deltas applied, up to the first that is
        missing, stale (another base's) or damaged."""
        if not rec.base:
            return rec
        for k in range(1, MAX_DELTAS + 1):
            raw = self.values.get(delta_key(rec.domain, k))
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
        marker: Offsets | None = None
        raw = self.values.get(marker_key(partition))
        if raw is not None:
            try:
                p, marker = decode_marker(raw)
                if p != partition:
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
        valid_from = {
            r.domain: r.offsets
            if marker is None
            else (max(r.offsets[0], marker[0]), max(r.offsets[1], marker[1]))
            for r in records
        }
        if marker is None:
            # The first publish of this partition never completed: a domain without a
            # record may have earlier messages, so read the partition from its beginning.
            start: Offsets = (OFFSET_BEGINNING, OFFSET_BEGINNING)
        else:
            start = (
                min([marker[0], *(v[0] for v in valid_from.values())]),
                min([marker[1], *(v[1] for v in valid_from.values())]),
            )
        every = [r.offsets for r in records] + ([marker] if marker else [])
        newest = (max(o[0] for o in every), max(o[1] for o in every))
        return PartitionPlan(records, start, valid_from, newest)


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
    values: dict[str, bytes] = {}
    try:
        md = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if md is None or md.error is not None:
            raise KafkaException(md.error if md is not None else f"no topic {topic}")
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
            return StateRecords(values, (settings.topic_contexts, settings.topic_rewards))
        consumer.assign(assign)
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took over {timeout_s} s")
            for m in consumer.consume(500, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() != -191:  # _PARTITION_EOF: fine, checked below
                        log.warning("reading %s: %s", topic, err.str())
                    continue
                key, part, offset = m.key(), m.partition() or 0, m.offset() or 0
                if key is not None:
                    value = m.value()
                    if value is None:  # a tombstone deletes the key
                        values.pop(key.decode("utf-8", "replace"), None)
                    else:
                        values[key.decode("utf-8", "replace")] = value
                if offset + 1 >= todo.get(part, 0):
                    todo.pop(part, None)
            for tp in consumer.position([TopicPartition(topic, p) for p in list(todo)]):
                if tp.offset >= todo.get(tp.partition, 1 << 62):
                    todo.pop(tp.partition, None)
    finally:
        consumer.close()
    return StateRecords(values, (settings.topic_contexts, settings.topic_rewards))
