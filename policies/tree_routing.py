"""The offset tree's routing and bottom-up training in numpy.

The path of decision-tree nodes, and the reference the compiled kernels
(``ot_leaf_probs``, ``ot_learn_least_squares``) are tested against. Nodes are heap ids:
leaf ``cap + slot``; node ``k``'s children are ``2k`` (left) and ``2k + 1`` (right).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.base import ContextBatch, FloatArray, IntArray
from policies.kernels import ot_contested_at
from policies.node_models import LinearBank, LogisticBank, TreeBank

NodeBank = LinearBank | LogisticBank | TreeBank


def paths(heap: IntArray, ev: IntArray, depth: int) -> tuple[IntArray, IntArray, NDArray[np.bool_]]:
    """For each candidate leaf (of event ``ev``) and level: node, side, contested.

    A node is contested for an event when its other side holds another of the event's
    candidates.
    """
    span = 2 << depth
    child = heap[:, None] >> np.arange(depth)[None, :]  # [rows, depth]: node below each level
    n_ev = int(ev[-1]) + 1 if len(ev) else 0
    if n_ev * span <= 1 << 22:
        # A [events, heap ids] occupancy table: O(1) lookups instead of a sorted isin.
        table = np.zeros((n_ev, span), dtype=bool)
        table[np.repeat(ev, child.shape[1]), child.ravel()] = True
        contested = table[ev[:, None], child ^ 1]
    else:
        present = (ev[:, None] * span + child).ravel()
        contested = np.isin(ev[:, None] * span + (child ^ 1), present)
    return child >> 1, child & 1, contested


def route(q: FloatArray, sharpness: float) -> FloatArray:
    """Routing probability to the right from the classifier's P(right) = q.

    ``q^s / (q^s + (1-q)^s)`` with ``s = sharpness``: confident nodes route (almost)
    deterministically, uncertain ones split the traffic and so explore where the tree
    is unsure. ``sharpness = 0`` routes hard (even odds still split evenly).
    """
    if sharpness <= 0:
        return np.where(q > 0.5, 1.0, np.where(q < 0.5, 0.0, 0.5))
    qs, ps = q**sharpness, (1.0 - q) ** sharpness
    return np.where(qs + ps > 0, qs / np.maximum(qs + ps, 1e-300), 0.5)


def leaf_probs(
    bank: NodeBank,
    heap: IntArray,
    batch: ContextBatch,
    xe: FloatArray,
    shift: FloatArray | None,
    depth: int,
    sharpness: float,
) -> FloatArray:
    """Each candidate leaf's probability: the product of its path's routing odds."""
    ev = batch.row_event()
    node, side, contested = paths(heap, ev, depth)
    q = np.full(node.shape, 0.5)
    ri, li = np.nonzero(contested)
    if len(ri):
        moved = None if shift is None else shift[ri, li]
        q[ri, li] = bank.predict(node[ri, li], xe[ev[ri]], moved)
    right = route(q, sharpness)
    factor = np.where(contested, np.where(side == 1, right, 1.0 - right), 1.0)
    return factor.prod(axis=1)


def train_nodes(
    bank: NodeBank,
    heap: IntArray,
    offsets: IntArray,
    leaf: IntArray,
    xe: FloatArray,
    gain: FloatArray,
    beat: NDArray[np.bool_],
    shift: FloatArray | None,
    depth: int,
) -> None:
    """Level by level from the leaves: every event still alive whose node at this level
    has a rival candidate teaches that node (the 1/2 offset's label, weight ``gain``),
    then stays alive only if the node, updated, routes its context towards the action."""
    alive = np.ones(len(leaf), dtype=bool)
    for level in range(depth):
        ev = ot_contested_at(heap, offsets, leaf, level, alive)
        if len(ev) == 0:
            continue  # no surviving event has a rival at this level
        child = leaf[ev] >> level
        node, side = child >> 1, child & 1
        at = None if shift is None else shift[ev, level]
        t = gain[ev] > 0
        if t.any():
            # The 1/2 offset: label the action's side when it beat the offset, else the
            # other side.
            label = np.where(beat[ev[t]], side[t], 1 - side[t]).astype(np.float64)
            bank.train(node[t], xe[ev[t]], label, gain[ev[t]], None if at is None else at[t])
        if level + 1 < depth:
            q = bank.predict(node, xe[ev], at)
            alive[ev[np.where(side == 1, q < 0.5, q > 0.5)]] = False
