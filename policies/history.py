"""A bounded ring buffer of logged candidate rows, in numpy arrays (never a sliced list)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.base import FloatArray, IntArray, PolicyError, expect_array


class RowRing:
    """The most recent ``capacity`` rows of (x, action slot, chosen, weight, reward).

    Storage starts small and doubles up to ``capacity``, so a quiet domain costs little;
    once full, each new row overwrites the oldest.
    """

    def __init__(self, n_features: int, capacity: int) -> None:
        if capacity < 1:
            raise PolicyError(f"history capacity must be >= 1, got {capacity}")
        self.n_features = n_features
        self.capacity = int(capacity)
        self.size = 0  # rows held
        self.head = 0  # next write position once full
        self.X: FloatArray = np.zeros((0, n_features))
        self.act: IntArray = np.zeros(0, dtype=np.int64)
        self.chosen: NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self.weight: FloatArray = np.zeros(0)
        self.reward: FloatArray = np.zeros(0)
        self._alloc(min(self.capacity, 256))

    def _alloc(self, cap: int) -> None:
        n, d = self.size, self.n_features
        X = np.zeros((cap, d))
        act = np.zeros(cap, dtype=np.int64)
        chosen = np.zeros(cap, dtype=bool)
        weight = np.zeros(cap)
        reward = np.zeros(cap)
        if n:
            X[:n], act[:n], chosen[:n] = self.X[:n], self.act[:n], self.chosen[:n]
            weight[:n], reward[:n] = self.weight[:n], self.reward[:n]
        self.X, self.act, self.chosen, self.weight, self.reward = X, act, chosen, weight, reward

    def extend(
        self,
        X: FloatArray,
        act: IntArray,
        chosen: NDArray[np.bool_],
        weight: FloatArray,
        reward: FloatArray,
    ) -> None:
        m = len(act)
        if m > self.capacity:  # only the newest rows can be kept
            X, act, chosen = X[-self.capacity :], act[-self.capacity :], chosen[-self.capacity :]
            weight, reward = weight[-self.capacity :], reward[-self.capacity :]
            m = self.capacity
        while len(self.act) < self.capacity and self.size + m > len(self.act):
            self._alloc(min(self.capacity, 2 * len(self.act)))
        if self.size < self.capacity:
            take = min(m, self.capacity - self.size)
            sl = slice(self.size, self.size + take)
            self.X[sl], self.act[sl], self.chosen[sl] = X[:take], act[:take], chosen[:take]
            self.weight[sl], self.reward[sl] = weight[:take], reward[:take]
            self.size += take
            X, act, chosen, weight, reward = (
                X[take:],
                act[take:],
                chosen[take:],
                weight[take:],
                reward[take:],
            )
            m -= take
        if m:
            pos = (self.head + np.arange(m)) % self.capacity
            self.X[pos], self.act[pos], self.chosen[pos] = X, act, chosen
            self.weight[pos], self.reward[pos] = weight, reward
            self.head = int((self.head + m) % self.capacity)

    def arrays(self, prefix: str) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        n = self.size
        return {prefix + "head": self.head}, {
            prefix + "X": self.X[:n],
            prefix + "act": self.act[:n],
            prefix + "chosen": self.chosen[:n],
            prefix + "weight": self.weight[:n],
            prefix + "reward": self.reward[:n],
        }

    def load(self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]], prefix: str) -> None:
        if prefix + "X" not in arrays:
            raise PolicyError("policy state lacks its history")
        n = len(arrays[prefix + "act"])
        if n > self.capacity:
            raise PolicyError(f"history holds {n} rows, over its capacity {self.capacity}")
        X = expect_array(arrays, prefix + "X", (n, self.n_features))
        act = expect_array(arrays, prefix + "act", (n,), kind="i")
        chosen = expect_array(arrays, prefix + "chosen", (n,), kind="b")
        weight = expect_array(arrays, prefix + "weight", (n,))
        reward = expect_array(arrays, prefix + "reward", (n,))
        head = extra.get(prefix + "head")
        if not isinstance(head, int) or not 0 <= head < max(1, self.capacity):
            raise PolicyError("policy state has a bad history head")
        self.size = 0
        self._alloc(max(n, min(self.capacity, 256)))
        self.X[:n], self.act[:n], self.chosen[:n], self.weight[:n], self.reward[:n] = (
            X,
            act,
            chosen,
            weight,
            reward,
        )
        self.size, self.head = n, head
