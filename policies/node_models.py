"""Banks of binary node classifiers for the offset tree: P(go right | x), weighted training.

Nodes are heap ids ``1 .. cap-1``. ``LinearBank`` (the default):
least-squares classifiers, one ridge regression of the side label per node with rank-1
updates. ``LogisticBank``: online logistic regression per node with AdaGrad steps, all
nodes in one ``[cap, d]`` array. ``TreeBank``: one
scikit-learn DecisionTreeClassifier per node, refit on the node's bounded importance-
weighted history whenever it grows by a quarter; fitted trees are kept as explicit
arrays (no pickling) and evaluated with numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.base import FloatArray, IntArray, PolicyError, expect_array

TREE_FIELDS = ("left", "right", "feature", "threshold", "p_right")


def moved(k: int) -> int:
    """Heap id of node ``k`` after the tree doubles (the old tree becomes the left subtree)."""
    return k + (1 << (k.bit_length() - 1))


class LogisticBank:
    """``p_right = sigmoid(w_k . x)``; AdaGrad: ``w += lr * g / sqrt(sum g^2)``."""

    def __init__(self, n_features: int, cap: int, lr: float = 0.5) -> None:
        self.n_features = n_features
        self.lr = lr
        self.W = np.zeros((cap, n_features))  # row k: node k's weights (row 0 unused)
        self.G2 = np.full((cap, n_features), 1e-6)  # AdaGrad's sums of squared gradients

    def model_size(self) -> int:
        return int(np.count_nonzero(self.W.any(axis=1)))

    def grow(self, cap: int) -> None:
        W, G2 = np.zeros((cap, self.n_features)), np.full((cap, self.n_features), 1e-6)
        for k in range(1, len(self.W)):
            W[moved(k)], G2[moved(k)] = self.W[k], self.G2[k]
        self.W, self.G2 = W, G2

    def predict(
        self, nodes: IntArray, X: FloatArray, shift: FloatArray | None = None
    ) -> FloatArray:
        """``sigmoid(w . x + 4 shift)``: a shift moves P(right) as much as a least-squares
        node's near even odds."""
        z = np.einsum("nd,nd->n", self.W[nodes], X)
        if shift is not None:
            z = z + 4.0 * shift
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))

    def train(
        self,
        nodes: IntArray,
        X: FloatArray,
        y: FloatArray,
        weight: FloatArray,
        shift: FloatArray | None = None,
    ) -> None:
        """One AdaGrad step per node on the batch's summed log-loss gradient."""
        grad = (weight * (y - self.predict(nodes, X, shift)))[:, None] * X
        G = np.zeros_like(self.W)
        np.add.at(G, nodes, grad)
        touched = np.unique(nodes)
        self.G2[touched] += G[touched] ** 2
        self.W[touched] += self.lr * G[touched] / np.sqrt(self.G2[touched])

    def state(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        return {}, {"W": self.W, "G2": self.G2}

    def load(self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]], cap: int) -> None:
        self.W = expect_array(arrays, "W", (cap, self.n_features)).copy()
        self.G2 = expect_array(arrays, "G2", (cap, self.n_features)).copy()
        if np.any(self.G2 <= 0):
            raise PolicyError("logistic node state has non-positive AdaGrad sums")


class LinearBank:
    """Least-squares node classifiers: weighted ridge regression of the side label on x
    (recursive least squares, rank-1 updates), ``P(right) = clip(theta_k . x, 0, 1)``."""

    def __init__(self, n_features: int, cap: int, l2: float = 1.0) -> None:
        from policies.ridge import RidgeArms

        self.n_features = n_features
        self.arms = RidgeArms(n_features, l2)
        self.arms.indices([str(k) for k in range(cap)])
        # Even odds before any data, through the bias (feature 0 is the constant 1).
        self.arms.theta[:cap, 0] = 0.5

    def model_size(self) -> int:
        return int(np.count_nonzero(self.arms.counts))

    def grow(self, cap: int) -> None:
        from policies.ridge import RidgeArms

        old = self.arms
        new = RidgeArms(self.n_features, old.l2)
        new.indices([str(k) for k in range(cap)])
        new.theta[:cap, 0] = 0.5
        for k in range(1, old.n_actions):
            m = moved(k)
            new.A_inv[m], new.theta[m], new.counts[m] = old.A_inv[k], old.theta[k], old.counts[k]
        self.arms = new

    def predict(
        self, nodes: IntArray, X: FloatArray, shift: FloatArray | None = None
    ) -> FloatArray:
        z = self.arms.predict(nodes, X)
        return np.clip(z if shift is None else z + shift, 0.0, 1.0)

    def train(
        self,
        nodes: IntArray,
        X: FloatArray,
        y: FloatArray,
        weight: FloatArray,
        shift: FloatArray | None = None,
    ) -> None:
        """Least squares of ``y`` on ``theta . x + shift``: the regression of ``y - shift``."""
        self.arms.update(nodes, X, y if shift is None else y - shift, w=weight)

    def state(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        return self.arms.arrays(prefix="node_")

    def load(self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]], cap: int) -> None:
        self.arms.load(extra, arrays, prefix="node_")
        if self.arms.n_actions != cap:
            raise PolicyError("linear node state does not match the tree size")


class TreeNode:
    """One node's decision tree and its ring of (x, label, weight)."""

    def __init__(self, n_features: int, history: int) -> None:
        self.n_features = n_features
        self.capacity = history
        self.X = np.zeros((0, n_features))
        self.y = np.zeros(0, dtype=np.int8)
        self.w = np.zeros(0)
        self.size = 0
        self.head = 0
        self.pending = 0  # examples since the last fit
        self._leaf(0.5)  # even odds until there is data

    @property
    def n_nodes(self) -> int:
        return len(self.left)

    def add(self, x: FloatArray, label: int, weight: float) -> None:
        if self.size < self.capacity:
            if self.size == len(self.y):  # grow by doubling up to the capacity
                cap = min(self.capacity, max(16, 2 * self.size))
                self.X = np.concatenate([self.X, np.zeros((cap - self.size, self.n_features))])
                self.y = np.concatenate([self.y, np.zeros(cap - self.size, dtype=np.int8)])
                self.w = np.concatenate([self.w, np.zeros(cap - self.size)])
            i = self.size
            self.size += 1
        else:
            i = self.head
            self.head = (self.head + 1) % self.capacity
        self.X[i], self.y[i], self.w[i] = x, label, weight
        self.pending += 1

    def fit(self, max_depth: int, min_split: int, min_gain: float, max_leaves: int) -> None:
        self.pending = 0
        n = self.size
        y, w = self.y[:n], self.w[:n]
        if n == 0 or w.sum() <= 0:
            return
        if np.all(y == y[0]):
            self._leaf(float(y[0]))
            return
        # Imported here: only the "tree" node model pays for scikit-learn's memory.
        from sklearn.tree import DecisionTreeClassifier

        clf = DecisionTreeClassifier(
            max_depth=max_depth,
            min_samples_split=min_split,
            min_impurity_decrease=min_gain,
            max_leaf_nodes=max_leaves,
            random_state=0,
        )
        clf.fit(self.X[:n], y, sample_weight=w)
        t = clf.tree_
        value = t.value[:, 0, :]
        col = list(clf.classes_).index(1)
        self.left = t.children_left.astype(np.int64)
        self.right = t.children_right.astype(np.int64)
        self.feature = np.maximum(t.feature, 0).astype(np.int64)
        self.threshold = t.threshold.astype(np.float64)
        self.p_right = value[:, col] / np.maximum(value.sum(axis=1), 1e-300)

    def _leaf(self, p: float) -> None:
        self.left = np.array([-1], dtype=np.int64)
        self.right = np.array([-1], dtype=np.int64)
        self.feature = np.array([0], dtype=np.int64)
        self.threshold = np.array([0.0])
        self.p_right = np.array([p])

    def predict(self, X: FloatArray) -> FloatArray:
        node = np.zeros(len(X), dtype=np.int64)
        rows = np.arange(len(X))
        while True:
            inner = self.left[node] >= 0
            if not inner.any():
                return self.p_right[node]
            go_left = X[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)

    def state(self, prefix: str) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        n = self.size
        return {prefix + "head": self.head, prefix + "pending": self.pending}, {
            prefix + "X": self.X[:n],
            prefix + "y": self.y[:n],
            prefix + "w": self.w[:n],
            **{prefix + f: getattr(self, f) for f in TREE_FIELDS},
        }

    def load(self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]], prefix: str) -> None:
        n = len(arrays.get(prefix + "y", ()))
        if n > self.capacity:
            raise PolicyError(f"node history of {n} rows exceeds its capacity {self.capacity}")
        self.X = expect_array(arrays, prefix + "X", (n, self.n_features)).copy()
        self.y = expect_array(arrays, prefix + "y", (n,), kind="i").astype(np.int8)
        self.w = expect_array(arrays, prefix + "w", (n,)).copy()
        self.size = n
        m = len(arrays.get(prefix + "left", ()))
        if m < 1:
            raise PolicyError("node tree is empty")
        self.left = expect_array(arrays, prefix + "left", (m,), kind="i").astype(np.int64)
        self.right = expect_array(arrays, prefix + "right", (m,), kind="i").astype(np.int64)
        self.feature = expect_array(arrays, prefix + "feature", (m,), kind="i").astype(np.int64)
        self.threshold = expect_array(arrays, prefix + "threshold", (m,)).copy()
        self.p_right = expect_array(arrays, prefix + "p_right", (m,)).copy()
        ids = np.arange(m)
        children_ok = np.all((self.left == -1) | (self.left > ids)) and np.all(
            (self.right == -1) | (self.right > ids)
        )
        if (
            not children_ok
            or np.any(self.left >= m)
            or np.any(self.right >= m)
            or np.any(self.feature >= self.n_features)
        ):
            raise PolicyError("node tree arrays are inconsistent")
        head, pending = extra.get(prefix + "head"), extra.get(prefix + "pending")
        if not isinstance(head, int) or not isinstance(pending, int) or head < 0 or pending < 0:
            raise PolicyError("node history has a bad head")
        self.head, self.pending = head, pending


class TreeBank:
    """Decision-tree node classifiers within a total node budget."""

    def __init__(
        self,
        n_features: int,
        cap: int,
        max_depth: int,
        min_split: int,
        min_gain: float,
        max_nodes: int,
        history: int,
    ) -> None:
        self.n_features = n_features
        self.cap = cap
        self.max_depth, self.min_split, self.min_gain = max_depth, min_split, min_gain
        self.max_nodes, self.history = max_nodes, history
        self.nodes: dict[int, TreeNode] = {}

    def model_size(self) -> int:
        return sum(m.n_nodes for m in self.nodes.values())

    def leaf_budget(self) -> int:
        # A tree with L leaves has 2L - 1 nodes; share the budget over the internal nodes.
        per_node = self.max_nodes // max(1, self.cap - 1)
        return max(2, (per_node + 1) // 2)

    def grow(self, cap: int) -> None:
        self.nodes = {moved(k): m for k, m in self.nodes.items()}
        self.cap = cap
        budget = self.leaf_budget()
        for m in self.nodes.values():  # the per-node budget shrank: refit within it
            if m.n_nodes > 2 * budget - 1:
                m.fit(self.max_depth, self.min_split, self.min_gain, budget)

    def predict(
        self, nodes: IntArray, X: FloatArray, shift: FloatArray | None = None
    ) -> FloatArray:
        if shift is not None:  # a classifier of labels has no score to move
            raise PolicyError("decision-tree nodes take no baseline")
        q = np.full(len(nodes), 0.5)
        for k in np.unique(nodes):
            m = self.nodes.get(int(k))
            if m is not None:
                sel = nodes == k
                q[sel] = m.predict(X[sel])
        return q

    def train(
        self,
        nodes: IntArray,
        X: FloatArray,
        y: FloatArray,
        weight: FloatArray,
        shift: FloatArray | None = None,
    ) -> None:
        if shift is not None:
            raise PolicyError("decision-tree nodes take no baseline")
        for k, x, label, w in zip(nodes.tolist(), X, y.tolist(), weight.tolist(), strict=True):
            m = self.nodes.get(k)
            if m is None:
                m = self.nodes[k] = TreeNode(self.n_features, self.history)
            m.add(x, int(label), w)
        budget = self.leaf_budget()
        for k in set(nodes.tolist()):
            m = self.nodes[k]
            # Refit when the history grew by a quarter (and by at least min_split examples).
            if m.pending >= max(self.min_split, m.size // 4):
                m.fit(self.max_depth, self.min_split, self.min_gain, budget)

    def trim(self) -> int:
        """Drop every node's refit history (the fitted trees stay); rows freed."""
        freed = 0
        for node in self.nodes.values():
            freed += node.size
            node.X, node.y, node.w = node.X[:0].copy(), node.y[:0].copy(), node.w[:0].copy()
            node.size = node.head = node.pending = 0
        return freed

    def state(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        extra: dict[str, Any] = {"tree_nodes": sorted(self.nodes)}
        arrays: dict[str, NDArray[Any]] = {}
        for k, m in self.nodes.items():
            e, a = m.state(f"n{k}_")
            extra.update(e)
            arrays.update(a)
        return extra, arrays

    def load(self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]], cap: int) -> None:
        ids = extra.get("tree_nodes")
        if not isinstance(ids, list) or not all(isinstance(k, int) and 1 <= k < cap for k in ids):
            raise PolicyError("offset tree state has bad node ids")
        self.cap = cap
        self.nodes = {}
        for k in ids:
            m = TreeNode(self.n_features, self.history)
            m.load(extra, arrays, f"n{k}_")
            self.nodes[k] = m
