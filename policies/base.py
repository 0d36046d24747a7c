"""The batch-first policy interface every algorithm implements.

A policy sees a :class:`ContextBatch`: ``n`` events, each with its own candidate list,
flattened into ``P`` rows (one per (event, candidate) pair) of a dense feature matrix.
``choose`` returns, per event, the sampled row, its probability and the full
distribution; ``learn`` takes the logged (features, action, reward, probability).

Every decision's logged probability is the exact probability with which the action was
sampled: subclasses only compute a distribution (``_distribution``) and the base class
samples from *that* distribution by inverse CDF, with a uniform drawn from a stable hash
of the event id and the policy's seed. The same state and the same event therefore give
the same decision, across processes and restarts (Python's salted ``hash()`` is never
used).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, ClassVar

import numpy as np
from mmh3 import hash as murmur3
from numpy.typing import NDArray

from policies.kernels import greedy_floor, sample_segments
from policies.knobs import Knob

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

STATE_VERSION = 1
_TWO_POW_53 = float(1 << 53)


class PolicyError(Exception):
    """Root of the policies package's errors (bad state, bad batch)."""


@dataclass(frozen=True, slots=True)
class ContextBatch:
    """``n`` events flattened into ``P`` candidate rows.

    Event ``i`` owns rows ``offsets[i]:offsets[i+1]``; ``actions[r]`` names row ``r``'s
    candidate and ``X[r]`` is its feature vector. ``keys[i]`` (the event id) seeds the
    event's exploration. ``C[r]`` is the part of ``X[r]`` the candidate's own features
    added (None: no event carried candidate features).
    """

    X: FloatArray
    actions: list[str]
    offsets: IntArray
    keys: list[str]
    C: FloatArray | None = None
    sizes: IntArray = field(init=False, repr=False, compare=False)  # candidates per event
    _k: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        o = self.offsets
        sizes = o[1:] - o[:-1]  # np.diff's Python wrapper costs more on a lone event
        object.__setattr__(self, "sizes", sizes)
        if len(sizes) == 1:  # a lone event (most of a quiet domain's batches)
            k = max(0, int(sizes[0]))
        else:  # the ufuncs' reduce: ndarray.min/max's Python wrappers cost more here
            uniform = len(sizes) and np.minimum.reduce(sizes) == np.maximum.reduce(sizes)
            k = int(sizes[0]) if uniform else 0
        object.__setattr__(self, "_k", k)

    @property
    def n_events(self) -> int:
        return len(self.keys)

    def row_event(self) -> IntArray:
        """Event index of every row, shape ``[P]``."""
        return np.repeat(np.arange(self.n_events, dtype=np.int64), self.sizes)

    def uniform_layout(self) -> int:
        """K when every event has exactly K candidates (rows reshape to ``[n, K, d]``), else 0."""
        return self._k

    def events(self, start: int, stop: int) -> ContextBatch:
        """Events ``start:stop`` as a batch of their own (a view of the rows)."""
        r0, r1 = int(self.offsets[start]), int(self.offsets[stop])
        return ContextBatch(
            self.X[r0:r1],
            self.actions[r0:r1],
            self.offsets[start : stop + 1] - r0,
            self.keys[start:stop],
            None if self.C is None else self.C[r0:r1],
        )


@dataclass(frozen=True, slots=True)
class Decisions:
    """``row[i]`` is event i's sampled row, ``probability[i] == pmf[row[i]]`` exactly."""

    row: IntArray
    probability: FloatArray
    pmf: FloatArray


@dataclass(frozen=True, slots=True)
class Feedback:
    """Logged outcomes: event i took row ``row[i]`` with ``probability[i]``, got ``reward[i]``."""

    batch: ContextBatch
    row: IntArray
    reward: FloatArray
    probability: FloatArray


def event_uniforms(keys: list[str], seed: int) -> FloatArray:
    """One uniform in [0, 1) per key with 53 random bits, from two murmur3 hashes.

    Stable across processes and platforms (unlike ``hash()``), so a replayed event
    draws the same number.
    """
    return seeded_uniforms(keys, repeat(seed, len(keys)))


def seeded_uniforms(keys: Sequence[str], seeds: Iterable[int]) -> FloatArray:
    """:func:`event_uniforms` with a seed per key (many policies' events in one pass)."""
    out = []
    last: int | None = None
    s1 = s2 = 0
    for k, seed in zip(keys, seeds, strict=True):
        if seed != last:
            last, (s1, s2) = seed, _seed_pair(seed)
        hi = murmur3(k, s1, False) >> 6  # 26 bits
        lo = murmur3(k, s2, False) >> 5  # 27 bits
        out.append(((hi << 27) | lo) / _TWO_POW_53)
    return np.array(out, dtype=np.float64)


def _seed_pair(seed: int) -> tuple[int, int]:
    return seed & 0x7FFFFFFF, (seed * 2654435761 + 1) & 0x7FFFFFFF


def sample_rows(pmf: FloatArray, offsets: IntArray, u: FloatArray) -> IntArray:
    """Inverse-CDF sampling of one row per event of ``pmf``.

    Row j of event i is chosen iff ``u_i * total_i`` falls in ``[cdf_{j-1}, cdf_j)`` of the
    event's own CDF, i.e. with probability ``pmf[j]`` (zero-probability rows never). The
    arithmetic is the same whatever the batch layout, so an event samples the same row
    in any batch.
    """
    return sample_segments(
        np.ascontiguousarray(pmf, dtype=np.float64),
        np.ascontiguousarray(offsets, dtype=np.int64),
        np.ascontiguousarray(u, dtype=np.float64),
    )


def check_floor(floor: float) -> float:
    """Validate an exploration floor (the mass spread uniformly over the K candidates)."""
    if not 0.0 <= floor < 1.0:
        raise PolicyError(f"floor must be in [0, 1), got {floor}")
    return float(floor)


def importance_weights(probability: FloatArray, max_weight: float) -> FloatArray:
    """``min(1/p, max_weight)``: the clipped inverse propensity of each logged action."""
    return np.minimum(1.0 / np.maximum(probability, 1e-12), max_weight)


def greedy_with_floor(scores: FloatArray, batch: ContextBatch, floor: float) -> FloatArray:
    """Best-scoring candidates share ``1 - floor``; every candidate gets ``floor / K`` more.

    Exact ties (within 1e-12) split the greedy mass evenly, so the distribution, and with
    it the logged probability, is exactly what is sampled. Each candidate's probability is
    at least ``floor / K``: deterministic scores become a distribution that explores.
    """
    return greedy_floor(np.ascontiguousarray(scores, dtype=np.float64), batch.offsets, floor)


def mix_floor(pmf: FloatArray, batch: ContextBatch, floor: float) -> FloatArray:
    """``(1 - floor) * pmf + floor / K`` per event: every candidate at least ``floor / K``."""
    k = batch.uniform_layout()
    if k:
        return (1.0 - floor) * pmf + floor / k
    sizes = np.repeat(batch.sizes, batch.sizes).astype(np.float64)
    return (1.0 - floor) * pmf + floor / sizes


class Policy(ABC):
    """Base class: owns sampling, seeding, counting and the state envelope.

    Subclasses fill in ``_distribution`` (per-row probabilities, each event's segment
    summing to 1), ``_learn``, and ``_arrays`` / ``_load_arrays`` for their learned state.
    Hyperparameters are constructor arguments stored under their own names; learned state
    is private.

    Parameters
    ----------
    n_features
        Dimension of the feature vectors (``ContextBatch.X.shape[1]``).
    seed
        Seeds exploration together with each event id.
    """

    name: ClassVar[str]
    # Its hyperparameters as the product configures them (policies/knobs.py).
    knobs: ClassVar[tuple[Knob, ...]] = ()

    def __init__(self, n_features: int, seed: int = 0) -> None:
        if n_features < 1:
            raise PolicyError(f"n_features must be >= 1, got {n_features}")
        self.n_features = int(n_features)
        self.seed = int(seed)
        self.n_learned = 0

    # -- public API -----------------------------------------------------------------
    def choose(self, batch: ContextBatch) -> Decisions:
        """Sample one candidate per event; returns rows, their probabilities and the pmf."""
        self._check_batch(batch)
        if batch.n_events == 0:
            empty = np.empty(0, dtype=np.int64)
            return Decisions(empty, np.empty(0), np.empty(0))
        pmf = self._distribution(batch)
        rows = sample_rows(pmf, batch.offsets, event_uniforms(batch.keys, self.seed))
        return Decisions(rows, pmf[rows], pmf)

    @classmethod
    def choose_many(
        cls, policies: Sequence[Policy], batch: ContextBatch, starts: Sequence[int]
    ) -> list[Decisions]:
        """``policies[i]`` (each of this class) chooses for events ``starts[i]:starts[i+1]``
        of ``batch``: exactly its own ``choose`` on those events. Subclasses may decide all
        at once, which spares many small domains the per-call cost."""
        if len(policies) == 1:
            return [policies[0].choose(batch)]
        return [p.choose(batch.events(starts[i], starts[i + 1])) for i, p in enumerate(policies)]

    def distribution(self, batch: ContextBatch) -> FloatArray:
        """The full distribution over every event's candidates (one entry per row), without
        sampling: what off-policy evaluation scores against the logged decisions."""
        self._check_batch(batch)
        if batch.n_events == 0:
            return np.empty(0)
        return self._distribution(batch)

    def learn(self, feedback: Feedback) -> None:
        """Learn from logged outcomes; ``n_learned`` grows by the number of events."""
        self._check_batch(feedback.batch)
        if feedback.batch.n_events == 0:
            return
        self._learn(feedback)
        self.n_learned += feedback.batch.n_events

    def clone(self) -> Policy:
        """An independent copy (same state, own arrays).

        A plain deep copy of this in-memory object: the checkpoint's copy-on-write clones
        every policy used while a write is in flight, and rebuilding through
        ``from_state`` (validating every array) cost ~0.5 ms per policy.
        """
        return copy.deepcopy(self)

    def trim(self) -> int:
        """Release rebuildable memory (histories) under memory pressure; returns rows freed.

        The learned model is kept; only what periodic refits would use is dropped.
        """
        return 0

    def params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable), as stored in the state."""
        return {"n_features": self.n_features, "seed": self.seed}

    def state_dict(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        """Explicit JSON metadata and named numpy arrays; never pickled."""
        meta: dict[str, Any] = {
            "version": STATE_VERSION,
            "policy": self.name,
            "params": self.params(),
            "n_learned": self.n_learned,
        }
        extra, arrays = self._arrays()
        meta["state"] = extra  # plain JSON by contract; the checkpoint writer serialises it
        return meta, {k: np.ascontiguousarray(v) for k, v in arrays.items()}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> Policy:
        """Rebuild a policy from :meth:`state_dict` output, validating everything."""
        if meta.get("version") != STATE_VERSION:
            raise PolicyError(f"unsupported policy state version {meta.get('version')!r}")
        if meta.get("policy") != cls.name:
            raise PolicyError(f"state is for policy {meta.get('policy')!r}, not {cls.name!r}")
        params = meta.get("params")
        if not isinstance(params, dict):
            raise PolicyError("policy state has no params object")
        try:
            policy = cls(**params)
        except TypeError as exc:
            raise PolicyError(f"bad params in policy state: {exc}") from exc
        n_learned = meta.get("n_learned")
        if not isinstance(n_learned, int) or n_learned < 0:
            raise PolicyError("policy state has a bad n_learned")
        for key, arr in arrays.items():
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise PolicyError(f"policy state array {key!r} holds non-finite values")
        policy._load_arrays(meta.get("state") or {}, arrays)
        policy.n_learned = n_learned
        return policy

    # -- subclass hooks ---------------------------------------------------------------
    @abstractmethod
    def _distribution(self, batch: ContextBatch) -> FloatArray:
        """Per-row probabilities ``[P]``; each event's segment sums to 1."""

    @abstractmethod
    def _learn(self, feedback: Feedback) -> None:
        """Update learned state from a non-empty feedback batch."""

    @abstractmethod
    def _arrays(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        """Learned state as (JSON extras, named arrays)."""

    @abstractmethod
    def _load_arrays(self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> None:
        """Inverse of ``_arrays``; raise :class:`PolicyError` on anything inconsistent."""

    # -- helpers ----------------------------------------------------------------------
    def _check_batch(self, batch: ContextBatch) -> None:
        if batch.X.ndim != 2 or batch.X.shape[1] != self.n_features:
            raise PolicyError(
                f"{self.name}: expected features of width {self.n_features}, "
                f"got shape {batch.X.shape}"
            )
        if len(batch.actions) != batch.X.shape[0] or batch.offsets[-1] != batch.X.shape[0]:
            raise PolicyError(f"{self.name}: batch rows, actions and offsets disagree")
        if batch.n_events and not batch.uniform_layout() and np.any(batch.sizes < 1):
            raise PolicyError(f"{self.name}: every event needs at least one candidate")


def expect_array(
    arrays: dict[str, NDArray[Any]], key: str, shape: tuple[int, ...], kind: str = "f"
) -> NDArray[Any]:
    """Fetch ``arrays[key]`` and check its shape and dtype kind (for ``_load_arrays``)."""
    if key not in arrays:
        raise PolicyError(f"policy state lacks array {key!r}")
    arr = arrays[key]
    if arr.shape != shape or arr.dtype.kind != kind:
        raise PolicyError(
            f"policy state array {key!r} has shape {arr.shape} dtype {arr.dtype}, "
            f"expected {shape} of kind {kind!r}"
        )
    return arr
