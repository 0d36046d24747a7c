"""Row-level deltas on the state topic: a checkpoint publishes what changed, not every
changed domain whole.

A domain's state on the topic is a chain: a full record under the domain's key (a *base*,
with a random id) and up to :data:`MAX_DELTAS` delta records under ``<domain>#<base>#<k>``,
each naming its base and its place ``k``. A delta carries the domain's small state whole (policy
metadata, pending decisions, early rewards, offsets) and, of each array, only the chunks
of rows whose bytes changed since the previous link: equal bytes, equal state, so a
restore is exact whatever changed them. The chain is followed from the base while each
next link names that base and follows on; a stale link of an older base is ignored.

A new base is published when a delta would not save half of one, when the deltas since the
base would outweigh it, or after :data:`MAX_DELTAS`; once it is acknowledged, the old
links are deleted with tombstones (before that they are merely stale). Only the publisher
that wrote a chain extends it: after a failed publish, a restore or a rebalance the next
record is a base. Domain names never contain ``#`` (``DOMAIN_RE``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream.errors import CorruptCheckpoint

MAX_DELTAS = 8
SEPARATOR = "#"
# Rows are compared in chunks of about this many bytes: one digest per row of a 1-D array
# would cost more than it saves; one per 64-dimensional covariance row is finer than needed.
CHUNK_BYTES = 4096

ArrayKey = tuple[str, str]  # (role, array name)


def delta_key(domain: str, base: str, k: int) -> str:
    """Link ``k`` of base ``base``: named by its base, so another chain's tombstones (an
    earlier owner's, landing late) can never delete it."""
    return f"{domain}{SEPARATOR}{base}{SEPARATOR}{k}"


def legacy_delta_key(domain: str, k: int) -> str:
    """Link ``k`` as format 1 named it (still read)."""
    return f"{domain}{SEPARATOR}{k}"


def is_delta_key(key: str) -> bool:
    return SEPARATOR in key and not key.startswith(SEPARATOR)


def chunk_rows(a: NDArray[Any]) -> int:
    """Rows per compared chunk of ``a`` (0 for a 0-d array: compared whole)."""
    if a.ndim == 0:
        return 0
    row = a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
    return max(1, CHUNK_BYTES // max(1, row))


@dataclass(frozen=True)
class ArrayDigest:
    dtype: str
    tail: tuple[int, ...]  # the shape past the first axis (the whole shape for 0-d)
    rows: int  # rows per chunk; 0: the array is one chunk
    chunks: tuple[bytes, ...]
    nbytes: int
    n: int = 0  # rows (0 for a 0-d array)

    def chunk_bytes(self, chunks: list[int]) -> int:
        return rows_of(chunks, self.rows, self.n) * (self.nbytes // max(1, self.n))


def digest(a: NDArray[Any]) -> ArrayDigest:
    a = np.ascontiguousarray(a)
    buf = memoryview(a.data).cast("B") if a.nbytes else memoryview(b"")
    rows = chunk_rows(a)
    if rows == 0:
        return ArrayDigest(a.dtype.str, a.shape, 0, (_hash(buf),), a.nbytes)
    step = rows * (a.nbytes // a.shape[0]) if a.shape[0] else 1
    chunks = tuple(_hash(buf[s : s + step]) for s in range(0, a.nbytes, step))
    return ArrayDigest(a.dtype.str, a.shape[1:], rows, chunks, a.nbytes, a.shape[0])


def _hash(b: memoryview) -> bytes:
    return hashlib.blake2b(b, digest_size=16).digest()


def digest_domain(
    roles: Mapping[str, tuple[Any, Mapping[str, NDArray[Any]]]],
) -> dict[ArrayKey, ArrayDigest]:
    return {(r, n): digest(a) for r, (_, arrs) in roles.items() for n, a in arrs.items()}


@dataclass(frozen=True)
class Chain:
    """What the topic holds of one domain, as this publisher wrote it."""

    base: str  # the base record's id
    seq: int  # deltas published on it
    base_bytes: int  # the base's array bytes
    delta_bytes: int  # array bytes of the deltas since
    digests: dict[ArrayKey, ArrayDigest]


Parts = dict[ArrayKey, list[int]]  # changed chunks of each array sent in part


def changes(chain: Chain, now: dict[ArrayKey, ArrayDigest]) -> tuple[Parts, int] | None:
    """The chunks to send of each array that changed in part, and the delta's array bytes;
    None when a delta is not worth it (a new base is due)."""
    if chain.seq >= MAX_DELTAS:
        return None
    parts: Parts = {}
    size = 0
    for key, d in now.items():
        old = chain.digests.get(key)
        if old == d:
            parts[key] = []
            continue
        if (
            old is None
            or d.rows == 0
            or (old.dtype, old.tail, old.rows) != (d.dtype, d.tail, d.rows)
        ):
            size += d.nbytes  # sent whole
            continue
        changed = [c for c, h in enumerate(d.chunks) if c >= len(old.chunks) or old.chunks[c] != h]
        parts[key] = changed
        size += d.chunk_bytes(changed)
    if 2 * size > chain.base_bytes or chain.delta_bytes + size > chain.base_bytes:
        return None
    return parts, size


def required_chunks(rows: int, before: int, n: int) -> set[int]:
    """Chunks a delta must carry: those holding rows the previous link did not have."""
    return set(range(before // rows, -(-n // rows))) if before < n else set()


def apply_parts(
    old: NDArray[Any],
    shape: list[int],
    rows: int,
    chunks: list[int],
    data: NDArray[Any],
    where: str,
) -> NDArray[Any]:
    """The previous link's array with the delta's chunks written over it."""
    n = shape[0]
    if old.dtype != data.dtype or list(old.shape[1:]) != shape[1:]:
        raise CorruptCheckpoint(f"{where}: delta does not fit its base ({old.shape} {old.dtype})")
    if sorted(set(chunks)) != chunks or (chunks and chunks[-1] * rows >= max(n, 1)):
        raise CorruptCheckpoint(f"{where}: bad chunk list")
    if not required_chunks(rows, old.shape[0], n) <= set(chunks):
        raise CorruptCheckpoint(f"{where}: delta lacks rows its base does not have")
    out = np.empty(shape, dtype=old.dtype)
    m = min(old.shape[0], n)
    out[:m] = old[:m]
    pos = 0
    for c in chunks:
        s, e = c * rows, min(c * rows + rows, n)
        out[s:e] = data[pos : pos + e - s]
        pos += e - s
    if pos != data.shape[0]:
        raise CorruptCheckpoint(f"{where}: delta rows do not match its chunks")
    return out


def rows_of(chunks: list[int], rows: int, n: int) -> int:
    return sum(min(c * rows + rows, n) - c * rows for c in chunks)
