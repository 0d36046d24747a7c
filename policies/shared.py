"""One reward model per domain over candidate features: the rows a shared model learns.

A shared row holds the context ``x`` (a row of ``X - C``), the candidate's own features
``c`` (``C``), and, hashed with signs (MurmurHash3) into the remaining ``dim - 2d`` slots
as Vowpal Wabbit's ``-q`` does, the crosses ``x_i c_j`` and the crosses of the candidate's
identity with the context. The identity crosses give every action its own linear model of
the context, as the per-action models had; the feature crosses carry what is learned about
one candidate to every candidate with similar features, one never seen before included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from mmh3 import hash as murmur3
from numba import njit

from policies.base import ContextBatch, FloatArray, IntArray, PolicyError

MODES = ("auto", "true", "false")
SHARED_ARM = "*"  # the one "action" of a shared model's ridge regression


@njit(cache=True, nogil=True)
def _shared_rows(X, C, ids, cross, cross_sign, ident, d, dim):
    """Each row's shared features (see the module docstring); ``ids[r]``: row r's action
    hash, ``cross[i, j]`` / ``ident[i]`` the crosses' slot hashes."""
    out = np.zeros((X.shape[0], dim))
    m = dim - 2 * d
    for r in range(X.shape[0]):
        for i in range(d):
            c = C[r, i]
            x = X[r, i] - c
            out[r, i] += x
            out[r, d + i] += c
            if x == 0.0:
                continue
            h = ids[r] ^ ident[i]
            out[r, 2 * d + h % m] += x if (h >> 31) & 1 else -x
            for j in range(d):
                if C[r, j] != 0.0:
                    out[r, 2 * d + cross[i, j]] += cross_sign[i, j] * x * C[r, j]
    return out


class SharedRows:
    """Turns a batch into shared rows of ``dim`` features for contexts of ``n_features``."""

    def __init__(self, n_features: int, dim: int, seed: int = 0) -> None:
        # dim > 2 * n_features + 1: checked by ModelRows, which builds these
        self.n_features, self.dim = n_features, dim
        self.seed = seed & 0x7FFFFFFF
        m = dim - 2 * n_features
        h = np.array(
            [
                [murmur3(f"{i}\x1f{j}", self.seed, False) for j in range(n_features)]
                for i in range(n_features)
            ],
            dtype=np.int64,
        )
        self.cross = h % m
        self.cross_sign = np.where((h >> 31) & 1, 1.0, -1.0)
        self.ident = np.array(
            [murmur3(f"\x1fid{i}", self.seed, False) for i in range(n_features)], dtype=np.int64
        )
        self._ids: dict[str, int] = {}

    def _id(self, action: str) -> int:
        h = self._ids.get(action)
        if h is None:
            if len(self._ids) >= 100_000:
                self._ids.clear()  # recomputed on demand: a bound, not a loss
            h = self._ids[action] = murmur3(action, self.seed, False)
        return h

    def rows(self, batch: ContextBatch) -> FloatArray:
        C = np.zeros_like(batch.X) if batch.C is None else batch.C
        ids = np.fromiter(map(self._id, batch.actions), np.int64, len(batch.actions))
        return _shared_rows(
            batch.X, C, ids, self.cross, self.cross_sign, self.ident, self.n_features, self.dim
        )


class Models(Protocol):
    def indices(self, actions: list[str]) -> IntArray: ...


class ModelRows:
    """Which rows a policy's reward model learns from: one ridge model per action over
    ``X`` (off), or one shared model over shared rows (on). ``"auto"`` turns it on at the
    first batch whose events carry candidate features, and decides then for good.

    ``rebuild(width)`` replaces the policy's models whenever their width changes: when
    ``auto`` turns on, or a saved state says otherwise."""

    def __init__(
        self,
        n_features: int,
        mode: str = "false",
        dim: int = 256,
        seed: int = 0,
        rebuild: Callable[[int], None] | None = None,
    ) -> None:
        if mode not in MODES:
            raise PolicyError(f"shared must be one of {', '.join(MODES)}, not {mode!r}")
        if mode != "false" and dim < 2 * n_features + 2:
            raise PolicyError(
                f"a shared model of {n_features} features needs dim > {2 * n_features + 1}"
            )
        self.n_features, self.mode, self.dim = n_features, mode, int(dim)
        self.seed = seed
        self._rebuild = rebuild
        self.on: bool | None = {"true": True, "false": False}.get(mode)
        self._shared: SharedRows | None = SharedRows(n_features, dim, seed) if self.on else None

    @property
    def width(self) -> int:
        """The reward model's feature dimension."""
        return self.dim if self.on else self.n_features

    def _set(self, on: bool) -> None:
        before = self.width
        self.on = on
        if on and self._shared is None:
            self._shared = SharedRows(self.n_features, self.dim, self.seed)
        if self.width != before and self._rebuild is not None:
            self._rebuild(self.width)

    def rows(
        self, batch: ContextBatch, models: Callable[[], Models]
    ) -> tuple[IntArray, FloatArray]:
        """Each row's model slot in ``models()`` (read after ``auto`` is decided on this
        batch, which may rebuild them) and its features."""
        if self.on is None:
            self._set(batch.C is not None)
        indices = models().indices
        if self._shared is None or not self.on:
            return indices(batch.actions), batch.X
        arm = indices([SHARED_ARM])
        return np.repeat(arm, len(batch.actions)), self._shared.rows(batch)

    def load(self, extra: dict[str, Any]) -> None:
        """Apply a saved state's decision (states saved before shared models: per action)."""
        on = extra.get("shared_on", False)
        if on is None:
            return
        if not isinstance(on, bool) or (self.mode != "auto" and on != (self.mode == "true")):
            raise PolicyError("policy state's shared model does not match its settings")
        self._set(on)
