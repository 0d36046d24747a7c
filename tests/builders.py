"""Builders shared by tests."""

from __future__ import annotations

import numpy as np

from policies import ContextBatch, Feedback, Policy, create_policy
from policies.features import EncodedContext
from stream.core.join import Pending


def trained(name: str, seed: int = 0) -> Policy:
    """Policy ``name`` on 4 features after 100 events of 3 candidates (5 batches)."""
    rng = np.random.default_rng(seed)
    p = create_policy(name, 4, seed=seed)
    for s in range(5):
        X = np.hstack([np.ones((20, 1)), rng.random((20, 3))])
        b = ContextBatch(
            np.repeat(X, 3, axis=0),
            ["a", "b", "c"] * 20,
            np.arange(0, 61, 3),
            [f"{s}-{i}" for i in range(20)],
        )
        d = p.choose(b)
        p.learn(Feedback(b, d.row, rng.random(20), d.probability))
    return p


def pending(domain: str, event_id: str, chosen: int = 1, probability: float = 0.5) -> Pending:
    """A decision awaiting its reward, over candidates a, b, c and two features."""
    enc = EncodedContext(((0, 2), (1.0, 0.5)), ("a", "b", "c"))
    return Pending(domain, event_id, enc, chosen, probability, "eg", "control", 10.0, 20.0)
