"""Context dict -> feature vectors: stable hashing into a bounded dimension.

* slot 0 is a constant bias;
* a number or bool ``k: v`` adds ``sign(k) * v`` at ``index(k)`` (``v`` clipped to +-1e6);
* a string ``k: "s"`` adds ``sign(k=s)`` at ``index(k=s)`` (one-hot through the hash);
* ``null`` and absent keys add nothing, and keys never seen before need no registration;
* candidate features (``candidate_features[action]``) hash in their own namespace,
  shared across actions, and are added to that candidate's row only.

Hashes are MurmurHash3 x86_32 from ``mmh3`` (bit-identical to scikit-learn's
murmurhash3_32; stable across processes and restarts, never Python's salted ``hash()``),
with the sign trick of Weinberger et al. (ICML 2009) so collisions cancel in expectation.
The hasher is stateless apart from its two parameters (``n_features``, ``seed``), so
features mean the same after a restart. With a :class:`FeatureIndex` (the service keeps
one per domain, saved with its state) the tokens a domain sees get their own slots while
there are free ones, unsigned and collision-free; hashing takes over past capacity.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Mapping, Sequence
from itertools import chain

import msgspec
import numpy as np
from mmh3 import hash as murmur3

from policies.base import ContextBatch, FloatArray, PolicyError
from policies.kernels import dense_rows

Scalar = float | int | bool | str | None
# Numbers are clipped to +-CLIP: a hostile 1e300 must not overflow x x^T in a model.
CLIP = 1e6
# A context encoded sparsely: parallel (slot, value) tuples. Tuples, not numpy arrays:
# contexts are small; and the collector stops tracking a tuple of numbers (not a list).
Sparse = tuple[tuple[int, ...], tuple[float, ...]]

ENTRY_BYTES = 120  # a cache entry's dict slot, str header and value tuple, roughly


class EncodedContext(msgspec.Struct, gc=False):
    """One event's features before densification; what pending joins keep.

    Out of the cyclic collector's sight (it holds no cycles): a service holds one per
    pending decision, and the collector's full passes over them were its longest pauses.
    """

    context: Sparse
    candidates: tuple[str, ...]
    candidate_features: dict[str, Sparse] | None = None


class _Table(dict[str, int]):
    """Token -> slot, never changed once built: shared by every index that holds the same
    tokens in the same order (the domains of one application, as a rule)."""

    __slots__ = ("__weakref__",)


_TABLES: weakref.WeakValueDictionary[tuple[str, ...], _Table] = weakref.WeakValueDictionary()


def _table(tokens: tuple[str, ...]) -> _Table:
    table = _TABLES.get(tokens)
    if table is None:
        table = _TABLES[tokens] = _Table((t, i + 1) for i, t in enumerate(tokens))
    return table


class FeatureIndex:
    """One domain's own slots: a feature token (``key``, or ``key=value`` for a string)
    seen with a non-zero value takes the next free slot while there is room, so the keys
    a domain uses never collide; past capacity a new token hashes as without an index.
    Saved with the domain's state, so a feature keeps its slot after a restart, a
    rebalance or a restore on another instance. Indexes holding the same tokens in the
    same order share one table (a new token swaps in another), so a domain's index costs
    one small object, however many tokens it holds.

    >>> h = FeatureHasher(n_features=4)
    >>> index = FeatureIndex(4)
    >>> h.sparse({"a": 2.0, "b": "x", "c": 0.0, "d": 1.0, "e": 1.0}, index=index)[0][:3]
    (1, 2, 3)
    >>> index.tokens()
    ['a', 'b=x', 'd']
    """

    __slots__ = ("capacity", "slots")

    def __init__(self, n_features: int, tokens: Sequence[str] = ()) -> None:
        self.capacity = n_features - 1  # slot 0 is the bias
        if len(tokens) > self.capacity or len(set(tokens)) != len(tokens):
            raise PolicyError(f"a feature index of {len(tokens)} tokens for {n_features} slots")
        self.slots: Mapping[str, int] = _table(tuple(map(sys.intern, tokens)))

    def tokens(self) -> list[str]:
        """The tokens in slot order (slot 1 first): the index's saved form."""
        return list(self.slots)

    def add(self, tokens: list[str]) -> None:
        """Give ``tokens`` (unseen, within capacity) the next slots, in order."""
        self.slots = _table((*self.slots, *map(sys.intern, tokens)))


class FeatureHasher:
    """Hashes context dicts into ``n_features`` dimensions (slot 0 = bias).

    Parameters
    ----------
    n_features
        Output dimension including the bias slot.
    seed
        Murmur3 seed; part of the feature definition.
    cache_size
        Bound on memoised key hashes (high-cardinality strings cannot grow it further).

    Examples
    --------
    >>> h = FeatureHasher(n_features=8)
    >>> enc = h.encode({"country": "de", "age": 31.0, "vip": True, "missing": None}, ["a", "b"])
    >>> batch = h.assemble([enc], ["event-1"])
    >>> batch.X.shape, batch.actions, float(batch.X[0, 0])
    ((2, 8), ['a', 'b'], 1.0)
    """

    def __init__(
        self,
        n_features: int = 64,
        seed: int = 0,
        cache_size: int = 200_000,
        cache_bytes: int = 32 * 2**20,
    ) -> None:
        if n_features < 2:
            raise PolicyError("n_features must be >= 2 (slot 0 is the bias)")
        self.n_features = n_features
        self.seed = seed & 0x7FFFFFFF
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._cache: dict[str, tuple[int, float]] = {}
        self._cached_bytes = 0  # tokens' lengths plus a per-entry overhead

    def _slot(self, token: str) -> tuple[int, float]:
        hit = self._cache.get(token)
        if hit is None:
            h = murmur3(token, self.seed)
            hit = (1 + abs(h) % (self.n_features - 1), 1.0 if h >= 0 else -1.0)
            cost = len(token) + ENTRY_BYTES
            if len(self._cache) >= self.cache_size or self._cached_bytes + cost > self.cache_bytes:
                self.clear_cache()  # bounded memory (count and bytes) beats a perfect hit rate
            self._cache[token] = hit
            self._cached_bytes += cost
        return hit

    def clear_cache(self) -> int:
        """Forget every cached slot; returns how many were cached."""
        n = len(self._cache)
        self._cache = {}
        self._cached_bytes = 0
        return n

    def sparse(
        self, values: Mapping[str, Scalar], namespace: str = "", index: FeatureIndex | None = None
    ) -> Sparse:
        """Encode one flat mapping (through ``index`` first, if given); non-finite
        numbers are the caller's to reject."""
        idx: list[int] = []
        val: list[float] = []
        slot = self._slot
        own = None if index is None else index.slots
        room = index is not None and len(index.slots) < index.capacity
        new: list[str] = []  # tokens taking slots now, added to the index at the end
        for key, v in values.items():
            if v is None:
                continue
            if isinstance(v, str):
                token, x = f"{namespace}{key}={v}", 1.0
            else:  # int, float or bool (bool is an int: True -> 1.0, False -> 0.0)
                token, x = namespace + key, min(CLIP, max(-CLIP, float(v)))
            if own is not None:
                j = own.get(token)
                if j is None and room and x != 0.0:
                    new.append(token)  # a mapping's keys are distinct: no token twice
                    j = len(own) + len(new)
                    room = j < index.capacity  # type: ignore[union-attr]
                if j is not None:
                    idx.append(j)
                    val.append(x)
                    continue
                if x == 0.0:
                    continue  # adds nothing and takes no slot
            j, s = slot(token)
            idx.append(j)
            val.append(s * x)
        if new and index is not None:
            index.add(new)
        return tuple(idx), tuple(val)

    def encode(
        self,
        context: Mapping[str, Scalar],
        candidates: Sequence[str],
        candidate_features: Mapping[str, Mapping[str, Scalar]] | None = None,
        index: FeatureIndex | None = None,
    ) -> EncodedContext:
        cf = None
        if candidate_features:
            cf = {
                a: self.sparse(f, "\x1fc:", index)
                for a, f in candidate_features.items()
                if a in candidates
            }
        return EncodedContext(self.sparse(context, "", index), tuple(candidates), cf or None)

    def assemble(self, events: Sequence[EncodedContext], keys: list[str]) -> ContextBatch:
        """Densify encoded events into one :class:`ContextBatch` (row = event x candidate)."""
        n, d = len(events), self.n_features
        if n == 1:  # a lone event (a quiet domain): no per-event machinery to amortise
            e = events[0]
            k = len(e.candidates)
            sizes = np.array([k], dtype=np.int64)
            offsets = np.array([0, k], dtype=np.int64)
            slots = np.array(e.context[0], dtype=np.int64)
            vals = np.array(e.context[1], dtype=np.float64)
            lens = np.array([len(slots)], dtype=np.int64)
            actions = list(e.candidates)
        else:
            sizes = np.fromiter((len(e.candidates) for e in events), dtype=np.int64, count=n)
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(sizes, out=offsets[1:])
            contexts = [e.context for e in events]
            lens = np.fromiter((len(c[0]) for c in contexts), np.int64, n)
            total = int(lens.sum())
            slots = np.fromiter(chain.from_iterable(c[0] for c in contexts), np.int64, total)
            vals = np.fromiter(chain.from_iterable(c[1] for c in contexts), np.float64, total)
            actions = list(chain.from_iterable(e.candidates for e in events))
        # Keys hashing to one slot add up, in order; the bias is slot 0 (hashed: 1 .. d-1).
        X: FloatArray = dense_rows(slots, vals, lens, sizes, d)
        cand_rows: list[int] = []
        cand_idx: list[int] = []
        cand_val: list[float] = []
        for i, e in enumerate(events):
            if e.candidate_features:
                start = int(offsets[i])
                for k, a in enumerate(e.candidates):
                    f = e.candidate_features.get(a)
                    if f:
                        cand_rows.extend([start + k] * len(f[0]))
                        cand_idx.extend(f[0])
                        cand_val.extend(f[1])
        C = None
        if cand_rows:
            C = np.zeros_like(X)
            np.add.at(
                C,
                (np.asarray(cand_rows, dtype=np.int64), np.asarray(cand_idx, dtype=np.int64)),
                cand_val,
            )
            X += C
        return ContextBatch(X, actions, offsets, keys, C)
