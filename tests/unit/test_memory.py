from __future__ import annotations

import time

import numpy as np

from policies import Feedback
from policies.features import FeatureHasher
from stream.config import load_settings
from stream.core.domains import Domains
from stream.core.join import Pending, PendingJoins
from stream.observe.memory import MemoryGuard, trim
from tests.builders import context_batch


def test_over_the_limit_trims_rebuildable_state_but_keeps_pending(tmp_path, monkeypatch):
    s = load_settings(state_dir=tmp_path, baseline_policy="epsilon_greedy")
    hasher = FeatureHasher(s.feature_dim, seed=s.seed)
    domains = Domains(s, hasher, None, lambda *a: None)
    joins = PendingJoins(s.max_pending, s.reward_wait_s)
    st = domains.get_or_create("d")
    assert st is not None
    enc = hasher.encode({"user": "u1", "x": 1.0}, ["a", "b"])
    joins.add(Pending("d", "e1", enc, 0, 0.5, "epsilon_greedy", "control", 0.0, 1e12))
    joins.add(Pending("d", "e2", enc, 0, 0.5, "epsilon_greedy", "control", 0.0, 1e12))
    joins.take("d", "e2")  # finished: remembered for duplicate detection
    from policies.doubly_robust import DoublyRobust

    dr = DoublyRobust(3)
    b = context_batch(np.ones((1, 3)), ["a", "b"], ["k"])
    dr.learn(Feedback(b, np.array([0]), np.array([1.0]), np.array([0.5])))
    st.baseline = dr
    rss = [100.0]
    shed: list[float] = []
    guard = MemoryGuard(
        limit_mb=50,
        interval_s=10,
        trim=lambda: trim(hasher, joins, domains),
        shed=lambda share: shed.append(share) or 0,
        rss_mb=lambda: rss[0],
    )
    assert not guard.check(now=0.0)  # not due yet
    assert guard.check(now=10.0 + time.monotonic())  # an interval later
    assert guard.trims == 1
    assert len(joins) == 1  # the pending decision inside its window is kept
    assert hasher._cache == {} and dr._history.size == 0
    assert shed == [0.1]  # still over the limit after trimming: pending decisions next
    assert dr.n_learned == 1  # the model itself is kept
    rss[0] = 10.0
    assert not guard.check(now=20.0 + time.monotonic())  # under the limit: nothing to do
