from __future__ import annotations

import numpy as np

from policies import ContextBatch, Feedback
from stream.config import load_settings
from stream.join import Pending
from stream.loop import Service
from stream.memory import MemoryGuard


def test_over_the_limit_trims_rebuildable_state_but_keeps_pending(tmp_path, monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("RL_"):
            monkeypatch.delenv(k)
    s = load_settings(state_dir=tmp_path, baseline_policy="epsilon_greedy")
    svc = Service(s)
    st = svc.domains.get_or_create("d")
    enc = svc.hasher.encode({"user": "u1", "x": 1.0}, ["a", "b"])
    svc.joins.add(Pending("d", "e1", enc, 0, 0.5, "epsilon_greedy", "control", 0.0, 1e12))
    svc.joins.add(Pending("d", "e2", enc, 0, 0.5, "epsilon_greedy", "control", 0.0, 1e12))
    svc.joins.take("d", "e2")  # finished: remembered for duplicate detection
    from policies.doubly_robust import DoublyRobust

    dr = DoublyRobust(3)
    b = ContextBatch(np.ones((2, 3)), ["a", "b"], np.array([0, 2]), ["k"])
    dr.learn(Feedback(b, np.array([0]), np.array([1.0]), np.array([0.5])))
    st.policy = dr
    rss = [100.0]
    guard = MemoryGuard(limit_mb=50, interval_s=10, rss_mb=lambda: rss[0])
    assert not guard.check(svc, now=0.0)  # not due yet
    assert guard.check(svc, now=guard._next)
    assert guard.trims == 1
    assert len(svc.joins) == 1  # the pending decision inside its window is kept
    assert svc.hasher._cache == {} and dr._history.size == 0
    assert dr.n_learned == 1  # the model itself is kept
    rss[0] = 10.0
    assert not guard.check(svc, now=guard._next)  # under the limit: nothing to do
