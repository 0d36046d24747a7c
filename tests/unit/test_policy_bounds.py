"""Bounded memory: after 200,000 updates the history and tree sizes stay within bounds."""

from __future__ import annotations

import numpy as np

from policies import Feedback
from policies.doubly_robust import DoublyRobust
from policies.offset_tree import OffsetTree
from tests.builders import context_batch

N_UPDATES = 200_000
BATCH = 500


def stream_batches(rng: np.random.Generator, d: int, k: int):
    n = BATCH
    for step in range(N_UPDATES // BATCH):
        X = np.hstack([np.ones((n, 1)), rng.random((n, d - 1))])
        acts = [f"a{(step + j) % (k + 2)}" for j in range(k)]  # the action set drifts
        yield context_batch(X, acts, f"{step}-")


def test_doubly_robust_history_stays_bounded():
    rng = np.random.default_rng(0)
    p = DoublyRobust(n_features=8, max_history=3000, refit_every=5000)
    for b in stream_batches(rng, 8, 4):
        d = p.choose(b)
        p.learn(Feedback(b, d.row, rng.random(b.n_events), d.probability))
    assert p.n_learned == N_UPDATES
    assert p._history.size == 3000 and len(p._history.act) == 3000
    meta, arrays = p.state_dict()
    assert arrays["hist_X"].shape == (3000, 8)


def test_offset_tree_nodes_stay_within_the_budget():
    rng = np.random.default_rng(1)
    p = OffsetTree(
        n_features=6, node_model="tree", max_nodes=40, max_depth=4, min_split=10, node_history=200
    )
    for b in stream_batches(rng, 6, 4):
        d = p.choose(b)
        r = (np.array([b.actions[i] for i in d.row]) == "a1").astype(float)
        p.learn(Feedback(b, d.row, r, d.probability))
    assert p.n_learned == N_UPDATES
    assert 0 < p.model_size() <= 40
    for node in p._bank.nodes.values():
        assert node.size <= 200 and len(node.y) <= 200
        assert node.n_nodes <= 2 ** (4 + 1) - 1  # depth bound
