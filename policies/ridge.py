"""Per-action ("disjoint") online ridge regression, shared by the linear policies.

Each action ``a`` keeps ``A_a = l2 * I + sum x x^T`` through its inverse and
``b_a = sum r x``; the estimate is ``theta_a = A_a^{-1} b_a``. Updates are rank-1
(Sherman–Morrison), never a fresh inverse per event. Actions are added on first sight,
so candidate lists may change between events; rows grow by doubling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.base import FloatArray, IntArray, PolicyError, expect_array


class RidgeArms:
    """Ridge estimates for a growing set of named actions."""

    def __init__(self, n_features: int, l2: float = 1.0) -> None:
        if l2 <= 0:
            raise PolicyError(f"l2 must be > 0, got {l2}")
        self.n_features = n_features
        self.l2 = float(l2)
        self.index: dict[str, int] = {}
        self._names: list[str] = []
        self.A_inv: FloatArray = np.empty((0, n_features, n_features))
        self.b: FloatArray = np.empty((0, n_features))
        self.theta: FloatArray = np.empty((0, n_features))
        self.counts: IntArray = np.empty(0, dtype=np.int64)
        self._alloc(4)

    def _alloc(self, capacity: int) -> None:
        d = self.n_features
        a_inv = np.broadcast_to(np.eye(d) / self.l2, (capacity, d, d)).copy()
        b = np.zeros((capacity, d))
        theta = np.zeros((capacity, d))
        counts = np.zeros(capacity, dtype=np.int64)
        n = len(self._names)
        if n:
            a_inv[:n], b[:n], theta[:n], counts[:n] = (
                self.A_inv[:n],
                self.b[:n],
                self.theta[:n],
                self.counts[:n],
            )
        self.A_inv = a_inv  # (l2 I + X_a^T X_a)^{-1}, one d x d block per action
        self.b = b  # X_a^T r_a
        self.theta = theta  # A_inv @ b, kept current after every learn
        self.counts = counts  # updates per action

    @property
    def n_actions(self) -> int:
        return len(self._names)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def indices(self, actions: list[str]) -> IntArray:
        """Slot of each action name, adding unseen actions."""
        index = self.index
        out = np.empty(len(actions), dtype=np.int64)
        for i, a in enumerate(actions):
            j = index.get(a)
            if j is None:
                j = len(self._names)
                if j == self.A_inv.shape[0]:
                    self._alloc(2 * j)
                index[a] = j
                self._names.append(a)
            out[i] = j
        return out

    def predict(self, idx: IntArray, X: FloatArray) -> FloatArray:
        """``theta_a . x`` per row."""
        return np.einsum("pd,pd->p", self.theta[idx], X)

    def widths(self, idx: IntArray, X: FloatArray) -> FloatArray:
        """``sqrt(x^T A_a^{-1} x)`` per row: the confidence width used by UCB/TS."""
        q = np.einsum("pd,pde,pe->p", X, self.A_inv[idx], X)
        return np.sqrt(np.maximum(q, 0.0))

    def update(
        self, idx: IntArray, X: FloatArray, y: FloatArray, w: FloatArray | None = None
    ) -> None:
        """Rank-1 updates ``A += w x x^T``, ``b += w y x`` for each row, in order."""
        touched = set()
        for k in range(len(idx)):
            a = int(idx[k])
            x = X[k]
            wk = 1.0 if w is None else float(w[k])
            if wk <= 0.0:
                continue
            ai = self.A_inv[a]
            ax = ai @ x
            # Sherman–Morrison:
            # (A + w x x^T)^{-1} = A^{-1} - w A^{-1}x x^T A^{-1} / (1 + w x^T A^{-1} x)
            ai -= np.outer(ax, ax) * (wk / (1.0 + wk * float(x @ ax)))
            self.b[a] += wk * float(y[k]) * x
            self.counts[a] += 1
            touched.add(a)
        for a in touched:
            ai = self.A_inv[a]
            # Keep the inverse symmetric: rank-1 downdates drift by rounding over 10^5 steps.
            ai += ai.T
            ai *= 0.5
            self.theta[a] = ai @ self.b[a]

    # -- state --------------------------------------------------------------------------
    def arrays(self, prefix: str = "") -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        n = self.n_actions
        return {prefix + "actions": self.names}, {
            prefix + "A_inv": self.A_inv[:n],
            prefix + "b": self.b[:n],
            prefix + "counts": self.counts[:n],
        }

    def load(
        self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]], prefix: str = ""
    ) -> None:
        names = extra.get(prefix + "actions")
        if not isinstance(names, list) or not all(isinstance(a, str) for a in names):
            raise PolicyError("policy state has a bad action list")
        if len(set(names)) != len(names):
            raise PolicyError("policy state lists an action twice")
        n, d = len(names), self.n_features
        a_inv = expect_array(arrays, prefix + "A_inv", (n, d, d))
        b = expect_array(arrays, prefix + "b", (n, d))
        counts = expect_array(arrays, prefix + "counts", (n,), kind="i")
        self.index, self._names = {}, []
        self._alloc(max(4, n))
        self.indices(names)
        self.A_inv[:n], self.b[:n], self.counts[:n] = a_inv, b, counts
        self.theta[:n] = np.einsum("nde,ne->nd", a_inv, b)
