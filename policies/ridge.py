"""Per-action ("disjoint") online ridge regression, shared by the linear policies.

Each action ``a`` keeps the inverse of ``A_a = l2 * I + sum w x x^T`` and its estimate
``theta_a``, updated by recursive least squares: with ``g = A_a^{-1} x`` after the rank-1
(Sherman–Morrison) update, ``theta_a += eta * w * g * (y - theta_a . x)``. With ``eta = 1``
this is exactly weighted ridge regression; a smaller ``eta`` damps each step. Never a fresh
inverse per event. Actions are added on first sight, so candidate lists may change
between events; storage grows by doubling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.base import (
    ContextBatch,
    Feedback,
    FloatArray,
    IntArray,
    Policy,
    PolicyError,
    expect_array,
)
from policies.kernels import rls_update
from policies.shared import ModelRows


class RidgeArms:
    """Ridge estimates for a growing set of named actions."""

    def __init__(self, n_features: int, l2: float = 1.0, forgetting: float = 1.0) -> None:
        if l2 <= 0:
            raise PolicyError(f"l2 must be > 0, got {l2}")
        if not 0 < forgetting <= 1:
            raise PolicyError(f"forgetting must be in (0, 1], got {forgetting}")
        self.n_features = n_features
        self.l2 = float(l2)
        self.forgetting = float(forgetting)  # each update weighs the past by this much
        self.index: dict[str, int] = {}
        self._names: list[str] = []
        self.A_inv: FloatArray = np.empty((0, n_features, n_features))
        self.theta: FloatArray = np.empty((0, n_features))
        self.counts: IntArray = np.empty(0, dtype=np.int64)
        self._alloc(4)

    def _alloc(self, capacity: int) -> None:
        d = self.n_features
        a_inv = np.broadcast_to(np.eye(d) / self.l2, (capacity, d, d)).copy()
        theta = np.zeros((capacity, d))
        counts = np.zeros(capacity, dtype=np.int64)
        n = len(self._names)
        if n:
            a_inv[:n], theta[:n], counts[:n] = self.A_inv[:n], self.theta[:n], self.counts[:n]
        self.A_inv = a_inv  # (l2 I + sum w x x^T)^{-1}, one symmetric d x d block per action
        self.theta = theta  # the ridge estimate
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
        try:  # fast path: every action already known
            return np.fromiter(map(index.__getitem__, actions), np.int64, len(actions))
        except KeyError:
            pass
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

    def rows_of(self, actions: list[str]) -> FloatArray:
        """``theta`` of each action in order (unseen ones added): a view when they are
        the actions first seen, in that order (a fixed action set's every event)."""
        if self._names[: len(actions)] == actions:
            return self.theta[: len(actions)]
        idx = self.indices(actions)  # first: an unseen action may reallocate theta
        return self.theta[idx]

    def predict(self, idx: IntArray, X: FloatArray) -> FloatArray:
        """``theta_a . x`` per row."""
        return np.einsum("pd,pd->p", self.theta[idx], X)

    def widths(self, idx: IntArray, X: FloatArray, k: int = 0) -> FloatArray:
        """``sqrt(x^T A_a^{-1} x)`` per row: the confidence width used by UCB and TS.

        ``k`` (optional) says every event has the same k actions in the same order, so the
        rows reshape to ``[n, k, d]`` and need no grouping.
        """
        if k:
            lead = idx[:k]
            n = len(idx) // k
            if bool((idx.reshape(n, k) == lead).all()):
                G = np.ascontiguousarray(X.reshape(n, k, -1).transpose(1, 0, 2))  # [k, n, d]
                A = self.A_inv[:k] if np.array_equal(lead, np.arange(k)) else self.A_inv[lead]
                q = np.einsum("knd,knd->kn", np.matmul(G, A), G).T.ravel()
                return np.sqrt(np.maximum(q, 0.0))
        uniq, inv, counts = np.unique(idx, return_inverse=True, return_counts=True)
        # Rows grouped by action into a padded (U, m, d) stack: one batched matmul.
        order = np.argsort(inv, kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        pos = np.empty(len(idx), dtype=np.int64)
        pos[order] = np.arange(len(idx)) - np.repeat(starts, counts)
        G = np.zeros((len(uniq), int(counts.max()), self.n_features))
        G[inv, pos] = X
        A = self.A_inv[: len(uniq)] if uniq[-1] == len(uniq) - 1 else self.A_inv[uniq]
        q = np.einsum("umd,umd->um", np.matmul(G, A), G)[inv, pos]
        return np.sqrt(np.maximum(q, 0.0))

    def update(
        self,
        idx: IntArray,
        X: FloatArray,
        y: FloatArray,
        w: FloatArray | None = None,
        eta: FloatArray | None = None,
    ) -> None:
        """One weighted RLS step per row, in order (see the module docstring)."""
        n = len(idx)
        rls_update(
            self.A_inv,
            self.theta,
            self.counts,
            np.ascontiguousarray(idx, dtype=np.int64),
            np.ascontiguousarray(X, dtype=np.float64),
            np.asarray(y, dtype=np.float64),
            np.ones(n) if w is None else np.asarray(w, dtype=np.float64),
            np.ones(n) if eta is None else np.asarray(eta, dtype=np.float64),
            self.forgetting,
            1.0 / self.l2,
        )

    # -- state --------------------------------------------------------------------------
    def arrays(self, prefix: str = "") -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        n = self.n_actions
        return {prefix + "actions": self.names}, {
            prefix + "A_inv": self.A_inv[:n],
            prefix + "theta": self.theta[:n],
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
        theta = expect_array(arrays, prefix + "theta", (n, d))
        counts = expect_array(arrays, prefix + "counts", (n,), kind="i")
        if not np.allclose(a_inv, np.swapaxes(a_inv, 1, 2), rtol=0, atol=1e-8):
            raise PolicyError("policy state has a non-symmetric inverse")
        self.index, self._names = {}, []
        self._alloc(max(4, n))
        self.indices(names)
        self.A_inv[:n], self.theta[:n], self.counts[:n] = a_inv, theta, counts


def chosen_rows(feedback: Feedback) -> ContextBatch:
    """The logged rows alone, one per event, as a batch."""
    b, rows = feedback.batch, feedback.row
    return ContextBatch(
        b.X[rows],
        [b.actions[r] for r in rows],
        np.arange(len(rows) + 1, dtype=np.int64),
        b.keys,
        None if b.C is None else b.C[rows],
    )


class RidgePolicy(Policy):
    """Shared by the policies whose model is one ridge regression per action.

    They learn the logged action's reward directly (no importance weighting) and differ
    only in how scores become a distribution (``_distribution``). With ``shared``
    (``"true"``, or ``"auto"`` when the first batch carries candidate features) the models
    are one ridge regression over ``shared_dim`` shared features (:mod:`policies.shared`).
    """

    def __init__(
        self,
        n_features: int,
        l2: float = 1.0,
        seed: int = 0,
        forgetting: float = 1.0,
        shared: str = "false",
        shared_dim: int = 256,
    ) -> None:
        super().__init__(n_features, seed)
        self.l2 = float(l2)
        self.forgetting = float(forgetting)
        self._inputs = ModelRows(n_features, shared, shared_dim, seed, self._new_models)
        self._new_models(self._inputs.width)

    def _new_models(self, width: int) -> None:
        self._arms = RidgeArms(width, self.l2, self.forgetting)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "l2": self.l2,
            "forgetting": self.forgetting,
            "shared": self._inputs.mode,
            "shared_dim": self._inputs.dim,
        }

    def _rows(self, batch: ContextBatch) -> tuple[IntArray, FloatArray]:
        """Each row's model slot and features (per action, or one shared model)."""
        return self._inputs.rows(batch, lambda: self._arms)

    def _learn(self, feedback: Feedback) -> None:
        idx, X = self._rows(chosen_rows(feedback))
        self._arms.update(idx, X, feedback.reward)

    def predict_rewards(self, batch: ContextBatch) -> FloatArray:
        """The ridge estimate of every row's reward (0 for actions never learned)."""
        idx, X = self._rows(batch)
        return self._arms.predict(idx, X)

    def _arrays(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        extra, arrays = self._arms.arrays()
        return {**extra, "shared_on": self._inputs.on}, arrays

    def _load_arrays(self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> None:
        self._inputs.load(extra)
        self._arms.load(extra, arrays)
