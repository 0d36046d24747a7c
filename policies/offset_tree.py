"""The offset tree: a binary tree of importance-weighted binary classifiers over actions."""

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
    check_floor,
    importance_weights,
    mix_floor,
)
from policies.kernels import ot_advantages, ot_leaf_probs, ot_learn_least_squares
from policies.knobs import FLOOR, SHARED, Knob
from policies.node_models import LinearBank, LogisticBank, TreeBank
from policies.ridge import RidgeArms, chosen_rows
from policies.shared import ModelRows
from policies.tree_routing import leaf_probs, train_nodes


class OffsetTree(Policy):
    """Offset-tree reduction (Beygelzimer & Langford, KDD 2009, "The Offset Tree for
    Learning with Partial Labels").

    Actions are the leaves of a binary tree (heap layout, leaves in order of first sight,
    so an action keeps its leaf; the tree doubles when new actions need leaves). Each
    internal node is a binary classifier deciding "left or right" for a context. For a
    logged ``(x, a, r, p)``, starting at ``a``'s leaf and walking up, each node whose other
    side holds a candidate learns the example with the **1/2 offset**: label ``a``'s side
    if ``r > offset`` else the other side, weight ``min(1/p, max_weight) * |r - offset|``;
    the walk continues upwards only while the node's classifier routes ``x`` towards ``a``
    (the node's choice matters only then). As in the paper's training, the levels are
    trained from the bottom up, so that judgement uses the nodes below as already trained
    on the batch. Its regret is bounded by the node classifiers' regret. A node whose
    other side holds no candidate is passed through, so candidate sets that change between
    events work.

    Node classifiers (``node_model``): ``"linear"``, the default, are least-squares
    classifiers (ridge regression of the side label, rank-1 updates); ``"logistic"``
    online logistic regression (AdaGrad); ``"tree"`` scikit-learn decision trees refit
    on each node's bounded, importance-weighted history whenever it grows by a quarter
    (configured by the tree parameters below).

    A decision routes the context from the root: each contested node sends it right with
    probability ``q^s / (q^s + (1-q)^s)`` for its classifier's ``P(right) = q`` and
    ``s = sharpness``, a leaf's probability is the product along its path, and a share
    ``floor`` of the mass is spread evenly over the candidates.
    Node classifiers see the event's context as the mean of its candidate rows.

    With a ``baseline`` (the default; linear and logistic nodes), the tree also keeps a
    ridge reward model per action (as epsilon-greedy's), and each node's score is moved by
    ``baseline`` times that model's optimistic advantage of its right side: the best
    upper confidence score ``r_hat + alpha * width`` among the event's candidates on the
    right less the best on the left. The node's classifier then learns, from the offset
    tree's importance-weighted labels, only where the model's preference is wrong (its
    regression target is the label less the shift), and a strong ``node_l2`` keeps that
    correction silent until the evidence for it is large. Without it, a tree of linear
    classifiers cannot express the argmax of per-action linear rewards, nor which
    candidates an event offers (docs/design.md). ``baseline = 0`` is the classic tree.

    Parameters
    ----------
    n_features
        Feature dimension.
    max_depth, min_split, split_threshold
        Decision-tree node classifiers' depth, minimum samples to split, and minimum
        weighted impurity decrease of a split.
    max_nodes
        Total budget of decision-tree nodes over all node classifiers.
    node_history
        Examples each node keeps (a ring) for its refits.
    node_model
        ``"linear"`` (the default), ``"logistic"`` or ``"tree"``: the node classifiers above.
    node_lr
        AdaGrad step size of the logistic node classifiers.
    node_l2
        Ridge penalty of the least-squares node classifiers (with a baseline: how much
        evidence a correction of the reward model needs).
    sharpness
        How deterministically a node routes given its classifier's odds (0 = hard).
    offset
        The reward offset (1/2 for rewards in [0, 1]).
    max_weight
        Clip of the importance weight ``1/p``.
    floor
        Probability mass spread uniformly over the candidates.
    seed
        Exploration seed, combined with each event id.
    baseline
        Weight of the reward model's advantage in each node's score (0 = no reward model,
        the classic offset tree; decision-tree nodes take none).
    alpha
        Weight of the reward model's confidence width in that advantage.
    shared, shared_dim
        ``"true"``: that reward model is one model over candidate features
        (:mod:`policies.shared`), ``"auto"``: when the first batch carries them. The nodes
        stay per leaf, one leaf per action name: a new item gets a fresh leaf and learns
        its way there through the baseline.

    Examples
    --------
    >>> import numpy as np
    >>> from policies.base import ContextBatch, Feedback
    >>> p = OffsetTree(n_features=2, min_split=2, seed=0)
    >>> batch = ContextBatch(np.ones((2, 2)), ["a", "b"], np.array([0, 2]), ["e1"])
    >>> p.choose(batch).pmf.tolist()  # untrained: even odds at the root
    [0.5, 0.5]
    >>> for _ in range(4):
    ...     p.learn(Feedback(batch, np.array([0]), np.array([0.0]), np.array([0.5])))
    >>> p.choose(batch).pmf.round(3).tolist()  # "a" paid nothing: route to "b"
    [0.005, 0.995]
    """

    name = "offset_tree"
    # fmt: off
    knobs = (
        Knob("max_depth", "ot_max_depth", int, 6, "tree depth", ge=1),
        Knob("min_split", "ot_min_split", int, 20, "events before a split", ge=2),
        Knob("split_threshold", "ot_split_threshold", float, 0.0, "gain a split needs", ge=0.0),
        Knob("max_nodes", "ot_max_nodes", int, 2047, "nodes at most", ge=1),
        Knob("node_model", "ot_node_model", str, "linear", "node classifiers",
             choices=("linear", "logistic", "tree")),
        Knob("baseline", "ot_baseline", float, 1.0, "weight of the reward model's advantage",
             ge=0.0, tune=("float", 0.25, 2.0)),
        Knob("alpha", "ot_alpha", float, 0.5, "the reward model's UCB width", ge=0.0,
             tune=("float", 0.0, 1.5)),
        FLOOR,
        *SHARED,
    )
    # fmt: on
    # The numba kernels for least-squares and logistic nodes; False runs the generic numpy
    # path (the tests check that both compute the same).
    compiled = True

    def __init__(
        self,
        n_features: int,
        max_depth: int = 6,
        min_split: int = 20,
        split_threshold: float = 0.0,
        max_nodes: int = 2047,
        node_history: int = 1000,
        node_model: str = "linear",
        node_lr: float = 0.5,
        node_l2: float = 300.0,
        sharpness: float = 30.0,
        offset: float = 0.5,
        max_weight: float = 5.0,
        floor: float = 0.01,
        seed: int = 0,
        baseline: float = 1.0,
        alpha: float = 0.5,
        shared: str = "false",
        shared_dim: int = 256,
    ) -> None:
        super().__init__(n_features, seed)
        if max_depth < 1 or min_split < 2 or split_threshold < 0 or max_nodes < 1:
            raise PolicyError(
                "offset tree needs max_depth >= 1, min_split >= 2, "
                "split_threshold >= 0 and max_nodes >= 1"
            )
        if node_model not in ("linear", "logistic", "tree"):
            raise PolicyError(f"node_model must be linear, logistic or tree, not {node_model!r}")
        if min(node_history, max_weight) < 1 or node_l2 <= 0 or min(sharpness, baseline, alpha) < 0:
            raise PolicyError(
                "offset tree needs node_history and max_weight >= 1, node_l2 > 0, "
                "and sharpness, baseline and alpha >= 0"
            )
        self.max_depth = int(max_depth)
        self.min_split = int(min_split)
        self.split_threshold = float(split_threshold)
        self.max_nodes = int(max_nodes)
        self.node_history = int(node_history)
        self.node_model = node_model
        self.node_lr = float(node_lr)
        self.node_l2 = float(node_l2)
        self.sharpness = float(sharpness)
        self.offset = float(offset)
        self.max_weight = float(max_weight)
        self.floor = check_floor(floor)
        self.baseline = 0.0 if node_model == "tree" else float(baseline)
        self.alpha = float(alpha)
        # The baseline's reward model: one ridge regression per action, keyed by name.
        self._inputs = ModelRows(n_features, shared, shared_dim, seed, self._new_model)
        self._model: RidgeArms | None = None
        if self.baseline:
            self._new_model(self._inputs.width)
        self._slots: dict[str, int] = {}
        self._names: list[str] = []
        self._cap = 2  # leaves; internal nodes are heap ids 1 .. cap-1
        self._bank: LinearBank | LogisticBank | TreeBank = self._new_bank()

    def _new_model(self, width: int) -> None:
        if self.baseline:
            self._model = RidgeArms(width)

    def _baseline_model(self) -> RidgeArms:
        assert self._model is not None, "the tree has no baseline"
        return self._model

    def _new_bank(self) -> LinearBank | LogisticBank | TreeBank:
        if self.node_model == "logistic":
            return LogisticBank(self.n_features, self._cap, self.node_lr)
        if self.node_model == "linear":
            return LinearBank(self.n_features, self._cap, self.node_l2)
        return TreeBank(
            self.n_features,
            self._cap,
            self.max_depth,
            self.min_split,
            self.split_threshold,
            self.max_nodes,
            self.node_history,
        )

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "max_depth": self.max_depth,
            "min_split": self.min_split,
            "split_threshold": self.split_threshold,
            "max_nodes": self.max_nodes,
            "node_history": self.node_history,
            "node_model": self.node_model,
            "node_lr": self.node_lr,
            "node_l2": self.node_l2,
            "sharpness": self.sharpness,
            "offset": self.offset,
            "max_weight": self.max_weight,
            "floor": self.floor,
            "baseline": self.baseline,
            "alpha": self.alpha,
            "shared": self._inputs.mode,
            "shared_dim": self._inputs.dim,
        }

    # -- structure ----------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._cap.bit_length() - 1

    def model_size(self) -> int:
        """Decision-tree nodes over all classifiers ("tree"), or trained nodes ("logistic")."""
        return self._bank.model_size()

    def _slot_ids(self, actions: list[str]) -> IntArray:
        slots = self._slots
        try:
            return np.fromiter(map(slots.__getitem__, actions), np.int64, len(actions))
        except KeyError:
            pass
        for a in actions:
            if a not in slots:
                slots[a] = len(self._names)
                self._names.append(a)
        while len(self._names) > self._cap:
            # Double the leaves: the old tree becomes the new root's left subtree, so every
            # action keeps its leaf and every node its classifier.
            self._cap *= 2
            self._bank.grow(self._cap)
        return np.fromiter(map(slots.__getitem__, actions), np.int64, len(actions))

    @staticmethod
    def _event_contexts(batch: ContextBatch) -> FloatArray:
        return np.add.reduceat(batch.X, batch.offsets[:-1], axis=0) / batch.sizes[:, None]

    def _shifts(self, batch: ContextBatch, heap: IntArray) -> FloatArray | None:
        """``[rows, depth]``: each row's node's score shift per level (None: no baseline)."""
        if self._model is None:
            return None
        idx, X = self._inputs.rows(batch, self._baseline_model)
        model = self._baseline_model()
        score = model.predict(idx, X)
        if self.alpha:
            score = score + self.alpha * model.widths(idx, X, batch.uniform_layout())
        return self.baseline * ot_advantages(heap, batch.offsets, score, self.depth)

    # -- policy -------------------------------------------------------------------------
    def trim(self) -> int:
        """Drop the decision-tree nodes' refit histories (the fitted trees stay)."""
        return self._bank.trim() if isinstance(self._bank, TreeBank) else 0

    def _compiled(self) -> tuple[FloatArray, int] | None:
        """Node weights and kind for the compiled paths (least squares / logistic)."""
        if not self.compiled:
            return None
        bank = self._bank
        if isinstance(bank, LinearBank):
            return bank.arms.theta, 0
        if isinstance(bank, LogisticBank):
            return bank.W, 1
        return None

    def _distribution(self, batch: ContextBatch) -> FloatArray:
        slots = self._slot_ids(batch.actions)  # may grow the tree: read _cap after
        heap = self._cap + slots
        shift = self._shifts(batch, heap)
        xe = self._event_contexts(batch)
        compiled = self._compiled()
        if compiled is None:
            prob = leaf_probs(self._bank, heap, batch, xe, shift, self.depth, self.sharpness)
        else:
            weights, kind = compiled
            if shift is None:
                shift = np.zeros((len(heap), self.depth))
            prob = ot_leaf_probs(
                heap, batch.offsets, xe, weights, kind, self.depth, self.sharpness, shift
            )
        return mix_floor(prob, batch, self.floor)

    def _learn(self, feedback: Feedback) -> None:
        """Train the nodes level by level from the bottom, as the offset tree's training does.

        A node learns an event only if the event's action wins every contested node below
        it, judged by those nodes' classifiers *after* they learned this batch (a single
        pass teaches upper nodes a level less per batch: docs/design.md).
        """
        batch = feedback.batch
        slots = self._slot_ids(batch.actions)  # may grow the tree: read _cap after
        heap = self._cap + slots
        leaf = heap[feedback.row]
        rows = self._shifts(batch, heap)  # as the decisions saw it, before the model learns
        shift = None if rows is None else rows[feedback.row]
        xe = self._event_contexts(batch)
        r = np.asarray(feedback.reward, dtype=np.float64)
        gain = importance_weights(feedback.probability, self.max_weight) * np.abs(r - self.offset)
        beat = r > self.offset
        self._train_nodes(heap, batch.offsets, leaf, xe, gain, beat, shift)
        if self._model is not None:
            idx, X = self._inputs.rows(chosen_rows(feedback), self._baseline_model)
            self._baseline_model().update(idx, X, r)

    def _train_nodes(
        self,
        heap: IntArray,
        offsets: IntArray,
        leaf: IntArray,
        xe: FloatArray,
        gain: FloatArray,
        beat: NDArray[np.bool_],
        shift: FloatArray | None,
    ) -> None:
        bank = self._bank
        if self.compiled and isinstance(bank, LinearBank):  # the same steps as below
            arms = bank.arms
            ot_learn_least_squares(
                heap,
                offsets,
                leaf,
                xe,
                arms.A_inv,
                arms.theta,
                arms.counts,
                self.depth,
                gain,
                beat,
                np.zeros((len(leaf), self.depth)) if shift is None else shift,
            )
            return
        train_nodes(self._bank, heap, offsets, leaf, xe, gain, beat, shift, self.depth)

    # -- state --------------------------------------------------------------------------
    def _arrays(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        extra, arrays = self._bank.state()
        if self._model is not None:
            model_extra, model_arrays = self._model.arrays(prefix="model_")
            model_extra["shared_on"] = self._inputs.on
            extra, arrays = {**extra, **model_extra}, {**arrays, **model_arrays}
        return {**extra, "actions": list(self._names), "cap": self._cap}, arrays

    def _load_arrays(self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> None:
        names, cap = extra.get("actions"), extra.get("cap")
        if not isinstance(names, list) or not all(isinstance(a, str) for a in names):
            raise PolicyError("offset tree state has a bad action list")
        if len(set(names)) != len(names):
            raise PolicyError("offset tree state lists an action twice")
        if not isinstance(cap, int) or cap < 2 or cap & (cap - 1) or cap < len(names):
            raise PolicyError("offset tree state has a bad leaf count")
        self._names = list(names)
        self._slots = {a: i for i, a in enumerate(names)}
        self._cap = cap
        self._bank = self._new_bank()
        self._bank.load(extra, arrays, cap)
        if "model_actions" not in extra:
            # Saved before the tree had a reward model: it keeps deciding as it learned to.
            self.baseline, self._model = 0.0, None
        elif self._model is not None:
            self._inputs.load(extra)
            self._model.load(extra, arrays, prefix="model_")
        else:
            raise PolicyError("offset tree state has a reward model but no baseline")
