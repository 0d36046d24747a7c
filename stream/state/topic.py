"""Domain snapshots on the compacted state topic: restore after losing the machine.

Every checkpoint, after its SQLite transaction commits, publishes (see :class:`StatePublisher`):

1. one record per domain that changed since its last published record: its policy
   states, its pending decisions, early rewards and remembered finished joins, the input
   offsets of its partition that the state reflects, and the decisions-topic mark of
   those offsets (:mod:`stream.kafka.decisionlog`); either whole (a base, key = the
   domain) or as a delta on the domain's chain (key ``<domain>#<base>#<k>``: only the rows
   that changed, see :mod:`stream.state.delta`);
2. once every one of those records is acknowledged, tombstones of the chains that new
   bases replaced and one marker per held partition, key ``#partition/<p>`` (never a
   valid domain name), carrying that checkpoint's offsets, its mark, and the *head*
   (base id, link) of every domain of the partition.

A marker at offsets M vouches for the heads it lists: each such domain's state as of M is
that record. A restorer (``StateRecords.plan``) follows each domain's chain as far as its
links hold; a domain that reaches the head its marker lists is valid from
``max(record offsets, M)``, any other (a broken chain, a record newer than the marker, an
older owner's record) from its record's own offsets, and a domain the marker lists whose
record is gone from the partition's beginning. The partition is read from the smallest of
those, so no domain's messages are skipped that its restored state does not hold.

Every record carries its writer's *epoch*, which each new owner of a partition raises
above any it has seen: reading the topic, an older epoch's record written after a newer
one's under the same key (a deposed owner's late write) is ignored.

Records are a small binary frame, never pickle: magic, a JSON header (schema, domain,
partition, offsets, epoch, mark, policy metadata, array descriptors, pending decisions,
early rewards, finished joins, SHA-256 of the rest) and the arrays' raw bytes (dtypes from
the checkpoint allow-list). Format 1 records (no epoch, mark or finished joins; deltas
keyed ``<domain>#<k>``) are still read.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING
from numpy.typing import NDArray

from stream.core.early import EarlyReward
from stream.core.finished import Finished
from stream.core.join import Pending
from stream.errors import CorruptCheckpoint, NewerFormat
from stream.state.delta import (
    ArrayKey,
    Parts,
    apply_parts,
    chunk_rows,
    rows_of,
)
from stream.state.framing import frame, unframe
from stream.state.records import (
    Snapshot,
    SnapshotMeta,
    early_from_record,
    early_record,
    finished_from_record,
    finished_record,
    info_from_record,
    info_record,
    pending_from_records,
    pending_records,
)

log = logging.getLogger(__name__)

MAGIC = b"BSS1"
SCHEMA = 2
SCHEMAS = (1, 2)  # read
MARKER_PREFIX = "#partition/"
EPOCH_HEADER = "epoch"  # every record's, tombstones too: its writer's epoch


Offsets = tuple[int, int]  # (next contexts offset, next rewards offset) of one partition
Head = tuple[str, int]  # (base id, link): the newest record of a domain's chain


def marker_key(partition: int) -> str:
    return f"{MARKER_PREFIX}{partition}"


def encode_domain(
    snap: Snapshot,
    domain: str,
    partition: int,
    offsets: Offsets,
    base: str = "",
    seq: int = 0,
    parts: Parts | None = None,
    *,
    epoch: int = 0,
    mark: int = OFFSET_BEGINNING,
    of: DomainShare | None = None,
) -> bytes:
    """One domain's record: its policies, pending decisions (those joined and not learned
    yet too), early rewards and finished joins (``of``: them, already picked out of
    ``snap``). With ``seq`` > 0 it is link ``seq`` of base ``base``'s chain, and the
    arrays in ``parts`` carry only their listed chunks (see :mod:`stream.state.delta`)."""
    mine = of if of is not None else DomainShare.of(snap, domain)
    arrays: list[list[Any]] = []
    chunks: list[bytes] = []
    roles: dict[str, Any] = {}
    # A domain may have only early rewards (no policy yet): then it has no roles.
    for role, (pmeta, arrs) in sorted(snap.domains.get(domain, {}).items()):
        roles[role] = pmeta
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
    info = meta.domains.get(domain)
    header = {
        "schema": SCHEMA,
        "kind": "delta" if seq else "domain",
        "domain": domain,
        "partition": partition,
        "offsets": list(offsets),
        "epoch": epoch,
        "mark": mark,
        "base": base,
        "seq": seq,
        "created": time.time(),
        "features": {"n_features": meta.n_features, "seed": meta.seed},
        "info": {} if info is None else info_record(info),
        "policies": roles,
        "arrays": arrays,
        "pending": pending_records(mine.pending, mine.buffered),
        "early": [early_record(e) for e in mine.early],
        "finished": [finished_record(f)[1:] for f in mine.finished],
    }
    body = b"".join(chunks)
    head = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(head + body).digest()
    return MAGIC + struct.pack("<I", len(head)) + digest + head + body


def encode_marker(
    partition: int,
    offsets: Offsets,
    epoch: int = 0,
    mark: int = OFFSET_BEGINNING,
    heads: dict[str, Head] | None = None,
) -> bytes:
    body = {
        "schema": SCHEMA,
        "kind": "partition",
        "partition": partition,
        "offsets": list(offsets),
        "epoch": epoch,
        "mark": mark,
        "heads": {d: list(h) for d, h in sorted((heads or {}).items())},
        "created": time.time(),
    }
    # It decides what a restore skips: a flipped digit must not read as another marker.
    return orjson.dumps({**body, "sha256": _marker_digest(body)}, option=orjson.OPT_SORT_KEYS)


def _marker_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class DomainShare:
    """What a domain's record carries besides its policies: its pending decisions, its
    joined rewards awaiting a learn, its early rewards and its finished joins."""

    pending: list[Pending] = field(default_factory=list)
    buffered: list[tuple[Pending, float]] = field(default_factory=list)
    early: list[EarlyReward] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)

    @classmethod
    def of(cls, snap: Snapshot, domain: str) -> DomainShare:
        return cls.by_domain(snap).get(domain) or cls()

    @classmethod
    def by_domain(cls, snap: Snapshot) -> dict[str, DomainShare]:
        """Every domain's share of ``snap``, in one pass over it."""
        out: dict[str, DomainShare] = {}

        def of(d: str) -> DomainShare:
            share = out.get(d)
            if share is None:
                share = out[d] = cls()
            return share

        for p in snap.pending:
            of(p.domain).pending.append(p)
        for p, r in snap.buffered:
            of(p.domain).buffered.append((p, r))
        for e in snap.meta.early:
            of(e.domain).early.append(e)
        for f in snap.complete().meta.finished:
            of(f.domain).finished.append(f)
        return out


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
    epoch: int = 0
    mark: int = OFFSET_BEGINNING  # decisions-topic offset of ``offsets``
    schema: int = SCHEMA

    @property
    def head(self) -> Head:
        return (self.base, self.seq)


def _offsets(obj: Any) -> Offsets:
    if (
        not isinstance(obj, list)
        or len(obj) != 2
        or not all(isinstance(o, int) and o >= -2 for o in obj)
    ):
        raise CorruptCheckpoint(f"bad offsets {obj!r}")
    return int(obj[0]), int(obj[1])


def _header(value: bytes) -> tuple[dict[str, Any], bytes]:
    if len(value) < 40 or value[:4] != MAGIC:
        raise CorruptCheckpoint("not a state record")
    (n,) = struct.unpack("<I", value[4:8])
    digest, head, body = value[8:40], value[40 : 40 + n], value[40 + n :]
    if len(head) != n or hashlib.sha256(head + body).digest() != digest:
        raise CorruptCheckpoint("state record fails its digest check")
    try:
        h = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise CorruptCheckpoint(f"malformed state record: {exc}") from exc
    if not isinstance(h, dict):
        raise CorruptCheckpoint("malformed state record header")
    return h, body


def record_epoch(value: bytes) -> int:
    """The writer's epoch of a domain record, delta or marker (0: unreadable or format 1)."""
    try:
        if value[:4] == MAGIC:
            (n,) = struct.unpack("<I", value[4:8])
            h = orjson.loads(value[40 : 40 + n])
        else:
            h = orjson.loads(value)
        return int(h.get("epoch", 0)) if isinstance(h, dict) else 0
    except (orjson.JSONDecodeError, struct.error, TypeError, ValueError):
        return 0


def decode_domain(value: bytes, topics: tuple[str, str]) -> DomainRecord:
    """Parse and validate a domain record or delta; raises :class:`CorruptCheckpoint`."""
    h, body = _header(value)
    try:
        seq = int(h.get("seq", 0))
        schema = h.get("schema")
        NewerFormat.check(schema, SCHEMA, f"state record of {h.get('domain')!r} is in state format")
        if schema not in SCHEMAS or h.get("kind") != ("delta" if seq else "domain"):
            raise CorruptCheckpoint(f"state record schema {schema!r} not one of {SCHEMAS}")
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
        finished = h.get("finished", [])
        if not isinstance(finished, list) or not isinstance(h["early"], list):
            raise CorruptCheckpoint("bad finished joins or early rewards")
        feats = h["features"]
        n_features, feature_seed = int(feats["n_features"]), int(feats["seed"])
        meta = SnapshotMeta(
            n_features,
            feature_seed,
            {domain: info_from_record(h["info"])} if h["info"] else {},
            [early_from_record(e) for e in h["early"]],
            [finished_from_record([domain, *f]) for f in finished],
        )
        pending, buffered = pending_from_records(h["pending"], n_features)
        ctx, rew = topics
        where_at = {(ctx, partition): offsets[0], (rew, partition): offsets[1]}
        roles_of = {domain: roles} if roles else {}
        snap = Snapshot(roles_of, pending, buffered, where_at, meta)
        base = str(h.get("base", ""))
        epoch, mark = int(h.get("epoch", 0)), int(h.get("mark", OFFSET_BEGINNING))
    except (KeyError, TypeError, ValueError) as exc:  # MalformedRecord is a ValueError
        raise CorruptCheckpoint(f"malformed state record: {exc}") from exc
    return DomainRecord(
        domain, partition, offsets, snap, base, seq, parts, epoch, mark, int(schema)
    )


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
        delta.domain,
        delta.partition,
        delta.offsets,
        delta.snapshot,
        delta.base,
        delta.seq,
        epoch=delta.epoch,
        mark=delta.mark,
        schema=delta.schema,
    )


@dataclass(frozen=True)
class Marker:
    partition: int
    offsets: Offsets
    epoch: int = 0
    mark: int = OFFSET_BEGINNING
    # domain -> its head as of ``offsets``; None in format 1 (every record counted as one)
    heads: dict[str, Head] | None = None


def decode_marker(value: bytes) -> Marker:
    try:
        h = orjson.loads(value)
        if isinstance(h, dict) and h.get("kind") == "partition":
            NewerFormat.check(
                h.get("schema"), SCHEMA, f"partition {h.get('partition')} marker is in state format"
            )
        if h.get("kind") != "partition" or h.get("schema") not in SCHEMAS:
            raise CorruptCheckpoint("not a partition marker")
        if h["schema"] > 1 and h.pop("sha256", None) != _marker_digest(h):
            raise CorruptCheckpoint("partition marker fails its digest check")
        heads = h.get("heads")
        if heads is not None:
            heads = {str(d): (str(b), int(k)) for d, (b, k) in heads.items()}
        return Marker(
            int(h["partition"]),
            _offsets(h["offsets"]),
            int(h.get("epoch", 0)),
            int(h.get("mark", OFFSET_BEGINNING)),
            heads,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptCheckpoint(f"malformed partition marker: {exc}") from exc
