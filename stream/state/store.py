"""SQLite checkpoints: policy states, pending joins and input offsets in one transaction.

Format: explicit numpy arrays (raw bytes + dtype + shape, dtypes from an allow-list) and
JSON, under a schema version, with a SHA-256 digest per checkpoint; never pickle. Loading
verifies the digest and every array; a corrupt or truncated checkpoint is reported and the
previous version is loaded instead. The last ``keep`` versions are kept.

Writing a checkpoint (:meth:`CheckpointStore.write`):

1. the caller takes a consistent snapshot (policy ``state_dict()`` copies, pending joins,
   and the offsets up to which that state reflects the input);
2. the store serialises it and computes its digest;
3. one SQLite transaction (WAL, synchronous=FULL) inserts the version, its policies,
   arrays, pending joins and offsets, and deletes versions beyond ``keep``;
4. the transaction commits; only after this may the caller commit the same offsets to
   Kafka, so on restart the SQLite copy is never behind the committed offsets.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from numpy.typing import NDArray

from stream.errors import CheckpointError, CorruptCheckpoint, NewerFormat
from stream.state.framing import frame, unframe
from stream.state.records import (
    Snapshot,
    meta_from_record,
    meta_record,
    pending_from_records,
    pending_records,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

PolicyState = tuple[dict[str, Any], dict[str, NDArray[Any]]]

_DDL = """
CREATE TABLE IF NOT EXISTS checkpoint (
    version INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL,
    schema INTEGER NOT NULL, digest TEXT NOT NULL, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policy (
    version INTEGER NOT NULL, domain TEXT NOT NULL, role TEXT NOT NULL, meta TEXT NOT NULL,
    PRIMARY KEY (version, domain, role));
CREATE TABLE IF NOT EXISTS array (
    version INTEGER NOT NULL, domain TEXT NOT NULL, role TEXT NOT NULL, name TEXT NOT NULL,
    dtype TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (version, domain, role, name));
CREATE TABLE IF NOT EXISTS pending (version INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS offset (
    version INTEGER NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    next INTEGER NOT NULL, PRIMARY KEY (version, topic, partition));
"""


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created: float
    domains: int
    pending: int


class CheckpointStore:
    """Versioned checkpoints in one SQLite file (WAL mode)."""

    def __init__(self, path: Path, keep: int = 5, read_only: bool = False) -> None:
        """``read_only``: for inspection; nothing is created, changed or moved (the file
        must exist)."""
        if keep < 1:
            raise CheckpointError("keep must be >= 1")
        self.path = Path(path)
        self.keep = keep
        try:
            if read_only:
                # Without a write-ahead log no one is writing: read the file as it is, or
                # SQLite would create the log and its index beside it.
                live = Path(f"{self.path}-wal").exists()
                uri = f"{self.path.resolve().as_uri()}?mode=ro{'' if live else '&immutable=1'}"
                self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_DDL)
            (newest,) = self._db.execute("SELECT max(schema) FROM checkpoint").fetchone()
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(f"cannot open checkpoint file {self.path}: {exc}") from exc
        try:
            self._refuse_newer(newest)
        except NewerFormat:
            self._db.close()
            raise

    def _refuse_newer(self, schema: object) -> None:
        NewerFormat.check(
            schema,
            SCHEMA_VERSION,
            f"checkpoint store {self.path} holds schema",
            ", or an empty RL_STATE_DIR",
        )

    def close(self) -> None:
        self._db.close()

    def damage(self) -> str | None:
        """What SQLite's integrity check finds wrong with the file (None: nothing)."""
        try:
            rows = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        found = [str(r[0]) for r in rows if r and r[0] != "ok"]
        return "; ".join(found[:3]) or None

    # -- write --------------------------------------------------------------------------
    def write(self, snap: Snapshot) -> int:
        """Store ``snap`` as a new version in one transaction; returns the version.

        The arrays are streamed: each is serialised, hashed and handed to SQLite in turn,
        so a write never holds a second copy of every domain's state (at 1,000 domains
        that copy was 130 MB). The digest row is filled in last, in the same transaction.
        """
        policies = []
        for domain in sorted(snap.domains):
            for role in sorted(snap.domains[domain]):
                pmeta, _ = snap.domains[domain][role]
                policies.append((domain, role, orjson.dumps(pmeta, option=orjson.OPT_SORT_KEYS)))
        snap.complete()
        pending = orjson.dumps(pending_records(snap.pending, snap.buffered))
        offsets = sorted(snap.offsets.items())
        meta = orjson.dumps(meta_record(snap.meta), option=orjson.OPT_SORT_KEYS)
        h = hashlib.sha256()
        _hash_head(h, meta, policies)
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "INSERT INTO checkpoint (created, schema, digest, meta) VALUES (?, ?, ?, ?)",
                (time.time(), SCHEMA_VERSION, "", meta.decode()),
            )
            v = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT INTO policy VALUES (?, ?, ?, ?)",
                [(v, d, r, m.decode()) for d, r, m in policies],
            )
            db.executemany("INSERT INTO array VALUES (?, ?, ?, ?, ?, ?, ?)", _rows(v, snap, h))
            db.execute("INSERT INTO pending VALUES (?, ?)", (v, pending))
            db.executemany(
                "INSERT INTO offset VALUES (?, ?, ?, ?)", [(v, t, p, o) for (t, p), o in offsets]
            )
            _hash_tail(h, pending, offsets)
            db.execute("UPDATE checkpoint SET digest = ? WHERE version = ?", (h.hexdigest(), v))
            old = [
                r[0]
                for r in db.execute(
                    "SELECT version FROM checkpoint ORDER BY version DESC LIMIT -1 OFFSET ?",
                    (self.keep,),
                )
            ]
            for table in ("checkpoint", "policy", "array", "pending", "offset"):
                db.executemany(f"DELETE FROM {table} WHERE version = ?", [(o,) for o in old])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return v

    # -- read ---------------------------------------------------------------------------
    def versions(self) -> list[VersionInfo]:
        try:
            return self._versions()
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(f"cannot read checkpoint file {self.path}: {exc}") from exc

    def _versions(self) -> list[VersionInfo]:
        rows = self._db.execute(
            "SELECT c.version, c.created, (SELECT COUNT(DISTINCT domain) FROM policy p"
            " WHERE p.version = c.version), (SELECT length(data) FROM pending q"
            " WHERE q.version = c.version) FROM checkpoint c ORDER BY c.version DESC"
        ).fetchall()
        return [VersionInfo(v, created, n, size or 0) for v, created, n, size in rows]

    def load(self, version: int) -> Snapshot:
        """One version, fully validated; raises :class:`CorruptCheckpoint`."""
        try:
            return self._load(version)
        except sqlite3.DatabaseError as exc:
            raise CorruptCheckpoint(f"checkpoint version {version} in {self.path}: {exc}") from exc

    def _load(self, version: int) -> Snapshot:
        db = self._db
        row = db.execute(
            "SELECT created, schema, digest, meta FROM checkpoint WHERE version = ?", (version,)
        ).fetchone()
        if row is None:
            raise CheckpointError(f"no checkpoint version {version}")
        created, schema, digest, meta_text = row
        if schema != SCHEMA_VERSION:
            self._refuse_newer(schema)
            raise CorruptCheckpoint(f"version {version} has schema {schema}, not {SCHEMA_VERSION}")
        policies = [
            (d, r, m.encode())
            for d, r, m in db.execute(
                "SELECT domain, role, meta FROM policy WHERE version = ? ORDER BY domain, role",
                (version,),
            )
        ]
        arrays = [
            (d, r, n, t, s.encode(), bytes(b))
            for d, r, n, t, s, b in db.execute(
                "SELECT domain, role, name, dtype, shape, data FROM array WHERE version = ?"
                " ORDER BY domain, role, name",
                (version,),
            )
        ]
        prow = db.execute("SELECT data FROM pending WHERE version = ?", (version,)).fetchone()
        pending_raw = bytes(prow[0]) if prow else b""
        offsets = [
            ((t, int(p)), int(o))
            for t, p, o in db.execute(
                "SELECT topic, partition, next FROM offset WHERE version = ?"
                " ORDER BY topic, partition",
                (version,),
            )
        ]
        if _digest(meta_text.encode(), policies, arrays, pending_raw, offsets) != digest:
            raise CorruptCheckpoint(f"checkpoint version {version} fails its digest check")
        try:
            domains: dict[str, dict[str, PolicyState]] = {}
            for d, r, m in policies:
                domains.setdefault(d, {})[r] = (orjson.loads(m), {})
            for d, r, n, t, s, b in arrays:
                domains[d][r][1][n] = unframe(t, orjson.loads(s), b, f"{d}/{r}/{n}")
            meta = meta_from_record(orjson.loads(meta_text))
            pending, buffered = pending_from_records(orjson.loads(pending_raw), meta.n_features)
        except (orjson.JSONDecodeError, KeyError, ValueError) as exc:
            raise CorruptCheckpoint(f"checkpoint version {version}: {exc}") from exc
        return Snapshot(domains, pending, buffered, dict(offsets), meta, version, created)

    def rollback(self, domain: str, version: int) -> int:
        """Write a new newest version: the latest state with ``domain`` as of ``version``.

        The service loads the newest version at start, so the rollback takes effect at the
        next start (run it while the service is stopped, or it is overwritten by the
        service's next checkpoint).
        """
        old = self.load(version)
        if domain not in old.domains:
            raise CheckpointError(f"domain {domain!r} is not in checkpoint version {version}")
        current = self.latest()
        if current is None:
            raise CheckpointError("no valid checkpoint to roll back from")
        current.domains[domain] = old.domains[domain]
        if domain in old.meta.domains:
            current.meta.domains[domain] = old.meta.domains[domain]
        return self.write(current)

    def latest(self) -> Snapshot | None:
        """The newest version that validates; corrupt ones are reported and skipped."""
        for info in self.versions():
            try:
                return self.load(info.version)
            except CorruptCheckpoint as exc:
                log.error("%s (%s); falling back to the previous version", exc, self.path)
        return None


def _rows(v: int, snap: Snapshot, h: Any) -> Iterator[tuple[Any, ...]]:
    """The array table's rows of ``snap`` in digest order, hashing each as it goes."""
    for domain in sorted(snap.domains):
        for role in sorted(snap.domains[domain]):
            _, arrs = snap.domains[domain][role]
            for name in sorted(arrs):
                dtype, dims, data = frame(arrs[name], f"{domain}/{role}/{name}")
                shape = orjson.dumps(dims)
                _hash_array(h, domain, role, name, dtype, shape, data)
                yield v, domain, role, name, dtype, shape.decode(), data


def _hash_head(h: Any, meta: bytes, policies: list[Any]) -> None:
    h.update(meta)
    for d, r, m in policies:
        h.update(f"P{d}\x00{r}\x00".encode())
        h.update(m)


def _hash_array(h: Any, d: str, r: str, n: str, t: str, s: bytes, b: bytes) -> None:
    h.update(f"A{d}\x00{r}\x00{n}\x00{t}\x00".encode())
    h.update(s)
    h.update(len(b).to_bytes(8, "little"))
    h.update(b)


def _hash_tail(h: Any, pending: bytes, offsets: list[Any]) -> None:
    h.update(b"Q")
    h.update(pending)
    for (t, p), o in offsets:
        h.update(f"O{t}\x00{p}\x00{o}".encode())


def _digest(
    meta: bytes, policies: list[Any], arrays: list[Any], pending: bytes, offsets: list[Any]
) -> str:
    """The digest :meth:`CheckpointStore.write` computes as it streams, in one call."""
    h = hashlib.sha256()
    _hash_head(h, meta, policies)
    for row in arrays:
        _hash_array(h, *row)
    _hash_tail(h, pending, offsets)
    return h.hexdigest()
