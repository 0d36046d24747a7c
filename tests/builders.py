"""Builders shared by tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from policies import ContextBatch, Feedback, Policy, create_policy
from policies.features import EncodedContext
from stream.core.join import Pending


def context_batch(
    contexts: ArrayLike | None = None,
    candidates: Sequence[str] | Sequence[Sequence[str]] = ("a", "b", "c"),
    keys: str | Sequence[str] = "e",
    *,
    rows: ArrayLike | None = None,
    C: ArrayLike | None = None,
) -> ContextBatch:
    """A :class:`ContextBatch` of events, each offering ``candidates``.

    ``contexts[i]`` is event i's feature vector, the X row of each of its candidates;
    ``rows`` instead gives every row of X itself. ``candidates`` is one list every event
    offers, or one list per event. ``keys`` are the event ids, or, as a string, their
    prefix: event i is ``f"{keys}{i}"``. ``C`` (per row) passes through.

    E.g. ``context_batch(X, ["a", "b"], "t-")``: events ``t-0``, ``t-1``, ... of X's rows,
    each with candidates a and b; ``context_batch(np.ones((2, 1)), [["a"], ["b", "c"]])``:
    event e0 offers a, e1 offers b and c.
    """
    if (contexts is None) == (rows is None):
        raise ValueError("give either contexts (one per event) or rows (one per candidate)")
    X = np.asarray(contexts if rows is None else rows, dtype=np.float64)
    if candidates and not isinstance(candidates[0], str):  # a candidate list per event
        sets = [list(c) for c in candidates]
    else:  # one list for all: an event per context, or per len(candidates) rows
        n = len(X) if rows is None else len(X) // max(len(candidates), 1)
        sets = [list(candidates)] * n
    sizes = [len(s) for s in sets]
    if rows is None:
        X = np.repeat(X, sizes, axis=0)  # raises unless one context per event
    offsets = np.zeros(len(sets) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(sizes)
    if len(X) != offsets[-1]:
        raise ValueError(f"{len(X)} rows for {offsets[-1]} candidates")
    ids = [f"{keys}{i}" for i in range(len(sets))] if isinstance(keys, str) else list(keys)
    if len(ids) != len(sets):
        raise ValueError(f"{len(ids)} keys for {len(sets)} events")
    actions = [a for s in sets for a in s]
    return ContextBatch(X, actions, offsets, ids, None if C is None else np.asarray(C, np.float64))


def trained(name: str, seed: int = 0) -> Policy:
    """Policy ``name`` on 4 features after 100 events of 3 candidates (5 batches)."""
    rng = np.random.default_rng(seed)
    p = create_policy(name, 4, seed=seed)
    for s in range(5):
        X = np.hstack([np.ones((20, 1)), rng.random((20, 3))])
        b = context_batch(X, keys=f"{s}-")
        d = p.choose(b)
        p.learn(Feedback(b, d.row, rng.random(20), d.probability))
    return p


def pending(domain: str, event_id: str, chosen: int = 1, probability: float = 0.5) -> Pending:
    """A decision awaiting its reward, over candidates a, b, c and two features."""
    enc = EncodedContext(((0, 2), (1.0, 0.5)), ("a", "b", "c"))
    return Pending(domain, event_id, enc, chosen, probability, "eg", "control", 10.0, 20.0)
