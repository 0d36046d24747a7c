from __future__ import annotations

import numpy as np
import pytest

from policies.base import Feedback, PolicyError, sample_rows
from policies.epsilon_greedy import EpsilonGreedy
from tests.builders import context_batch


def test_sampling_frequencies_match_the_logged_pmf():
    """Across many event ids, each row is chosen as often as its logged probability says."""
    pmf = np.array([0.1, 0.6, 0.3, 0.0, 1.0])
    offsets = np.array([0, 4, 5])
    rng = np.random.default_rng(0)
    u = rng.random(50_000)
    counts = np.zeros(5)
    for i in range(0, 50_000, 2):
        rows = sample_rows(pmf, offsets, u[i : i + 2])
        counts[rows] += 1
    freq = counts[:4] / 25_000
    assert np.all(np.abs(freq - pmf[:4]) < 0.01)  # 3.3 sd of a binomial at n=25k is < 0.01
    assert counts[3] == 0 and counts[4] == 25_000


def test_event_seeding_matches_pmf_for_a_real_policy():
    p = EpsilonGreedy(n_features=2, epsilon=0.3, seed=11)
    x = np.array([[1.0, 0.0]])  # every event's context
    fb = context_batch(x, ["b"], ["warm"])
    for _ in range(10):
        p.learn(Feedback(fb, np.array([0]), np.array([1.0]), np.array([1.0])))
    n = 20_000
    batch = context_batch(np.repeat(x, n, axis=0), keys="event-")
    d = p.choose(batch)
    assert np.allclose(d.pmf[:3], [0.1, 0.8, 0.1])
    freq = np.bincount(d.row - batch.offsets[:-1], minlength=3) / n
    assert np.all(np.abs(freq - [0.1, 0.8, 0.1]) < 0.015)


def test_ties_share_the_greedy_mass_exactly():
    p = EpsilonGreedy(n_features=2, epsilon=0.2)
    b = context_batch(np.ones((1, 2)), ["a", "b", "c", "d"], ["e"])
    assert np.allclose(p.choose(b).pmf, 0.25)


def test_learns_the_best_action_per_context():
    rng = np.random.default_rng(1)
    p = EpsilonGreedy(n_features=3, epsilon=0.1, seed=0)
    means = {"a": np.array([0.2, 0.7]), "b": np.array([0.6, 0.3])}  # best: b in ctx0, a in ctx1
    total, n = 0.0, 0
    for step in range(200):
        ctx = rng.integers(2, size=20)
        X = np.stack([np.ones(20), ctx == 0, ctx == 1], axis=1)
        b = context_batch(X, ["a", "b"], f"{step}-")
        d = p.choose(b)
        acts = [b.actions[r] for r in d.row]
        r = np.array([float(rng.random() < means[a][c]) for a, c in zip(acts, ctx, strict=True)])
        if step >= 100:
            total += r.sum()
            n += 20
        p.learn(Feedback(b, d.row, r, d.probability))
    # Optimal is 0.65, uniform 0.45; epsilon=0.1 costs about 0.02.
    assert total / n > 0.58


def test_rank_one_updates_match_the_closed_form_ridge():
    rng = np.random.default_rng(2)
    p = EpsilonGreedy(n_features=4, l2=2.0)
    X = rng.normal(size=(300, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(scale=0.1, size=300)
    b = context_batch(X, ["a"], [str(i) for i in range(300)])
    p.learn(Feedback(b, np.arange(300), y, np.ones(300)))
    exact = np.linalg.solve(2.0 * np.eye(4) + X.T @ X, X.T @ y)
    assert np.allclose(p._arms.theta[0], exact, atol=1e-8)


def test_parameters_validated():
    with pytest.raises(PolicyError):
        EpsilonGreedy(n_features=4, epsilon=1.5)
    with pytest.raises(PolicyError):
        EpsilonGreedy(n_features=4, l2=0.0)


def test_hostile_magnitudes_keep_the_distribution_finite():
    from policies.features import FeatureHasher

    h = FeatureHasher(16)
    p = EpsilonGreedy(n_features=16)
    for i, v in enumerate([1e300, -1e308, 1e-300, 12345678901234567890.0, 0.5]):
        b = h.assemble([h.encode({"x": v, "y": -v}, ["a", "b"])], [f"e{i}"])
        d = p.choose(b)
        assert np.all(np.isfinite(d.pmf)) and np.isclose(d.pmf.sum(), 1.0)
        p.learn(Feedback(b, d.row, np.array([1.0]), d.probability))
    meta, arrays = p.state_dict()
    assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")
