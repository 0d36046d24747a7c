"""Every tuning knob changes what it says it changes (a knob that changes nothing is a defect)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from policies import ContextBatch, Feedback
from policies.doubly_robust import DoublyRobust
from policies.history import RowRing
from policies.linear_ts import LinearTS
from policies.linucb import LinUCB
from policies.offset_tree import OffsetTree
from policies.ridge import RidgeArms
from tests.builders import context_batch


def two_arm_stream(seed: int, n_batches: int = 40, n: int = 25):
    """Context x in {e1, e2}; arm 'a' pays in e1, 'b' in e2 (Bernoulli 0.8 vs 0.2)."""
    rng = np.random.default_rng(seed)
    for s in range(n_batches):
        c = rng.integers(2, size=n)
        X = np.stack([np.ones(n), c == 0, c == 1], axis=1).astype(float)
        yield context_batch(X, ["a", "b"], f"{seed}-{s}-"), c, rng


def run(policy, seed: int = 0, n_batches: int = 40) -> float:
    total = 0.0
    count = 0
    for b, c, rng in two_arm_stream(seed, n_batches):
        d = policy.choose(b)
        good = np.array(
            [(b.actions[r] == "a") == (ci == 0) for r, ci in zip(d.row, c, strict=True)]
        )
        r = (rng.random(len(c)) < np.where(good, 0.8, 0.2)).astype(float)
        policy.learn(Feedback(b, d.row, r, d.probability))
        total += r.sum()
        count += len(r)
    return total / count


def probe(policy, key: str = "probe") -> ContextBatch:
    return context_batch([[1.0, 1.0, 0.0]], ["a", "b"], [key])


def greedy_mass_spread(policy, n: int = 200) -> float:
    """Mean probability of the non-best candidate over fresh contexts (exploration)."""
    rng = np.random.default_rng(9)
    X = np.hstack([np.ones((n, 1)), rng.random((n, 2))])
    b = context_batch(X, ["a", "b"], "q")
    pmf = policy.choose(b).pmf.reshape(n, 2)
    return float(pmf.min(axis=1).mean())


# -- Doubly robust ------------------------------------------------------------------------
def exploited_arm(policy) -> str:
    """Train 'a' only (reward 0.6, 20 times), then ask: which arm does the policy prefer?"""
    b = probe(policy)
    for i in range(20):
        fb = probe(policy, f"t{i}")
        policy.learn(Feedback(fb, np.array([0]), np.array([0.6]), np.array([0.9])))
    d = policy.choose(b)
    return b.actions[int(np.argmax(d.pmf))]


def test_dr_alpha_is_exploration_strength():
    # Without a bonus the known-good arm wins; a strong bonus favours the unexplored one.
    assert exploited_arm(DoublyRobust(3, alpha=0.0, floor=0.0)) == "a"
    assert exploited_arm(DoublyRobust(3, alpha=5.0, floor=0.0)) == "b"


def one_step(p: DoublyRobust, reward: float = 1.0, times: int = 1) -> float:
    b = probe(p)
    for i in range(times):
        fb = probe(p, f"s{i}")
        p.learn(Feedback(fb, np.array([0]), np.array([reward]), np.array([1.0])))
    return float(p._arms.theta[p._arms.index["a"]] @ b.X[0])


def test_dr_learning_rate_scales_each_step():
    full = one_step(DoublyRobust(3, refit_every=0, learning_rate=1.0))
    tenth = one_step(DoublyRobust(3, refit_every=0, learning_rate=0.1))
    assert tenth == pytest.approx(0.1 * full, rel=1e-9)


def test_dr_lr_decay_shrinks_later_steps():
    def adapt(decay: float) -> float:
        p = DoublyRobust(3, refit_every=0, lr_decay=decay)
        one_step(p, reward=0.0, times=30)  # a long run of zeros...
        return one_step(p, reward=1.0, times=5)  # ...then how far do five ones move it?

    assert adapt(0.8) < 0.1 * adapt(1.0)


def test_dr_max_weight_clips_importance_weights():
    def step_after_rare_event(max_weight):
        p = DoublyRobust(n_features=3, alpha=0.0, refit_every=0, max_weight=max_weight)
        b = probe(p)
        p.learn(Feedback(b, np.array([1]), np.array([1.0]), np.array([0.01])))  # w = 100
        return float(p._arms.theta[p._arms.index["b"]] @ b.X[1])

    assert step_after_rare_event(2.0) < step_after_rare_event(50.0)


def test_dr_max_history_bounds_the_refit_window():
    sizes = {}
    for h in (50, 400):
        p = DoublyRobust(n_features=3, max_history=h, refit_every=100)
        run(p, n_batches=20)
        sizes[h] = p._history.size
        assert p._history.size == min(h, 20 * 25 * 2)
    assert sizes[50] < sizes[400]
    # And the window changes the refit result.
    thetas = []
    for h in (20, 1000):
        p = DoublyRobust(n_features=3, max_history=h, refit_every=100, max_weight=20)
        run(p, n_batches=8)
        thetas.append(p._arms.theta[:2].copy())
    assert not np.allclose(thetas[0], thetas[1])


def test_dr_learns_the_contextual_best_arm():
    assert run(DoublyRobust(n_features=3, seed=0), n_batches=60) > 0.7  # optimum 0.8


# -- Baselines ----------------------------------------------------------------------------
def test_linucb_alpha_and_ts_scale_change_exploration():
    assert exploited_arm(LinUCB(3, alpha=0.0, floor=0.0)) == "a"
    assert exploited_arm(LinUCB(3, alpha=5.0, floor=0.0)) == "b"

    def spread(v: float) -> float:
        p = LinearTS(3, v=v, floor=0.0)
        exploited_arm(p)
        return float(p.choose(probe(p)).pmf.min())

    assert spread(0.01) < spread(3.0)


@pytest.mark.parametrize("cls", [LinUCB, LinearTS])
def test_baselines_learn(cls):
    assert run(cls(3, seed=0), n_batches=60) > 0.7


# -- Offset tree --------------------------------------------------------------------------
def test_offset_tree_learns_with_each_node_model():
    for model in ("linear", "logistic", "tree"):
        p = OffsetTree(n_features=3, node_model=model, min_split=4, seed=0)
        assert run(p, n_batches=60) > 0.65, model


def test_offset_tree_knobs_shape_the_node_trees():
    def size(**kw):
        p = OffsetTree(n_features=6, node_model="tree", **kw)
        rng = np.random.default_rng(3)
        for s in range(40):
            X = np.hstack([np.ones((50, 1)), rng.random((50, 5))])
            b = context_batch(X, ["a", "b", "c", "d"], f"{s}-")
            d = p.choose(b)
            # A nonlinear rule: pays when the chosen action matches the quadrant of x1, x2.
            quad = (X[:, 1] > 0.5) * 2 + (X[:, 2] > 0.5)
            r = (d.row - b.offsets[:-1] == quad).astype(float)
            p.learn(Feedback(b, d.row, r, d.probability))
        return p.model_size()

    base = size(max_depth=8, min_split=4, max_nodes=4000)
    assert size(max_depth=1, min_split=4, max_nodes=4000) < base
    assert size(max_depth=8, min_split=400, max_nodes=4000) < base
    assert size(max_depth=8, min_split=4, split_threshold=0.05, max_nodes=4000) < base
    assert size(max_depth=8, min_split=4, max_nodes=12) <= 12 < base


def test_offset_tree_new_actions_get_leaves_and_keep_theirs():
    p = OffsetTree(n_features=2, seed=0)
    b1 = context_batch(np.ones((1, 2)), ["a", "b"], ["e1"])
    p.choose(b1)
    slots = dict(p._slots)
    b2 = context_batch(np.ones((1, 2)), ["c", "d", "e", "a", "b"], ["e2"])
    d = p.choose(b2)
    assert {k: p._slots[k] for k in slots} == slots  # old actions keep their leaves
    assert set(p._slots) == {"a", "b", "c", "d", "e"} and p._cap == 8
    assert np.isclose(d.pmf.sum(), 1.0)


def test_offset_tree_one_batch_teaches_the_whole_path():
    """The levels learn bottom-up: rewards that turn a lower node also reach the root.

    Leaves: c, d | a, b. "a" first loses (its node turns to "b"), then one batch shows it
    pays. Judged by that node as it was before the batch, "a" loses there and the root
    learns nothing from the batch; judged by the node after it, the root turns to "a".
    (Learning before any choice also checks that new actions get leaves in learn.)
    """
    one = context_batch(np.ones((1, 1)), ["c", "d", "a", "b"], ["p"])

    def batch(n: int, reward: float, tag: str) -> Feedback:
        b = context_batch(np.ones((n, 1)), one.actions, tag)
        row = np.arange(n) * 4 + 2  # "a" every time
        return Feedback(b, row, np.full(n, reward), np.full(n, 0.25))

    for compiled in (True, False):  # least-squares nodes: the numba kernel, and numpy
        p = OffsetTree(n_features=1, seed=0, baseline=0.0, node_l2=1.0, sharpness=10.0)
        p.compiled = compiled
        p.learn(batch(10, 0.0, "lose"))
        assert p.choose(one).pmf[2] < 0.1
        p.learn(batch(40, 1.0, "win"))
        assert p.choose(one).pmf[2] > 0.9


def _best_offered_share(p: OffsetTree, seed: int, n: int = 4000) -> float:
    """Share of the second half's decisions that take the best of the offered candidates:
    8 actions with fixed click rates, each event offering a random 2 to 4 of them."""
    rng = np.random.default_rng(seed)
    means = np.array([0.2, 0.8, 0.5, 0.3, 0.7, 0.1, 0.6, 0.4])
    hits = []
    for s in range(n // 20):
        offers = [rng.choice(8, size=rng.integers(2, 5), replace=False) for _ in range(20)]
        b = context_batch(np.ones((20, 1)), [[f"a{a}" for a in o] for o in offers], f"{s}-")
        d = p.choose(b)
        chosen = np.array([o[i] for o, i in zip(offers, d.row - b.offsets[:-1], strict=True)])
        hits.append(chosen == [o[np.argmax(means[o])] for o in offers])
        r = (rng.random(20) < means[chosen]).astype(float)
        p.learn(Feedback(b, d.row, r, d.probability))
    return float(np.concatenate(hits)[n // 2 :].mean())


def test_offset_tree_baseline_takes_the_best_offered_candidate():
    """A node's classifier sees the context, not which candidates an event offers: alone it
    can only learn the better side on average. The reward model's advantage is computed
    over the offered candidates, so the tree with a baseline takes the best of them."""
    for seed in range(3):
        assert _best_offered_share(OffsetTree(1, seed=0), seed) > 0.93
        classic = OffsetTree(1, seed=0, baseline=0.0, node_l2=1.0, sharpness=10.0)
        assert _best_offered_share(classic, seed) < 0.7


def test_offset_tree_state_keeps_its_reward_model_or_its_absence():
    batch = context_batch(np.ones((1, 2)), keys=["e"])
    fb = Feedback(batch, np.array([1]), np.array([1.0]), np.array([0.4]))
    tree = OffsetTree(2, seed=1)
    tree.learn(fb)
    meta, arrays = tree.state_dict()
    assert "model_theta" in arrays
    again = OffsetTree.from_state(meta, arrays)
    assert np.array_equal(again.distribution(batch), tree.distribution(batch))
    # Saved before trees had a reward model: no baseline params, no model arrays.
    classic = OffsetTree(2, seed=1, baseline=0.0, node_l2=1.0, sharpness=10.0)
    classic.learn(fb)
    meta, arrays = classic.state_dict()
    assert "model_theta" not in arrays
    del meta["params"]["baseline"], meta["params"]["alpha"]
    old = OffsetTree.from_state(meta, arrays)
    assert old.baseline == 0.0
    assert np.array_equal(old.distribution(batch), classic.distribution(batch))
    # Decision-tree nodes classify labels: they take no baseline.
    assert OffsetTree(2, node_model="tree").baseline == 0.0


# -- Shared machinery ---------------------------------------------------------------------
def test_ring_buffer_keeps_the_newest_rows_in_order():
    ring = RowRing(n_features=1, capacity=5)
    for start in range(0, 12, 3):
        vals = np.arange(start, start + 3, dtype=float)
        ring.extend(vals[:, None], np.zeros(3, dtype=np.int64), np.zeros(3, bool), vals, vals)
    assert ring.size == 5
    assert sorted(ring.X[:5, 0].tolist()) == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_width_fast_path_matches_the_general_path():
    rng = np.random.default_rng(4)
    arms = RidgeArms(5)
    idx = arms.indices(["a", "b", "c"] * 7)
    X = rng.random((21, 5))
    arms.update(idx, X, rng.random(21))
    assert np.allclose(arms.widths(idx, X, 3), arms.widths(idx, X))


@pytest.mark.parametrize("baseline", [0.0, 1.0])
@pytest.mark.parametrize("model", ["linear", "logistic"])
def test_offset_tree_compiled_path_matches_numpy(model, baseline):
    """The numba kernels compute what the vectorised numpy path computes."""

    def train(p, compiled: bool):
        p.compiled = compiled
        rng = np.random.default_rng(5)
        out = []
        for s in range(15):
            k = 3 + s % 4
            X = np.hstack([np.ones((20, 1)), rng.random((20, 3))])
            acts = [f"a{(s + j) % 7}" for j in range(k)]
            b = context_batch(X, acts, f"{s}-")
            d = p.choose(b)
            out.append(d.pmf)
            p.learn(Feedback(b, d.row, rng.random(20), d.probability))
        return out

    a = train(OffsetTree(4, node_model=model, seed=2, baseline=baseline), True)
    b = train(OffsetTree(4, node_model=model, seed=2, baseline=baseline), False)
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x, y, atol=1e-9)


# -- exponential forgetting (RL_DR_FORGETTING) -------------------------------------------
def _arm_run(forgetting: float, steps: list[tuple[np.ndarray, float]]) -> Any:
    from policies.ridge import RidgeArms

    arms = RidgeArms(4, l2=1.0, forgetting=forgetting)
    idx = arms.indices(["a"])
    for x, y in steps:
        arms.update(idx, x[None, :], np.array([y]))
    return arms


def test_forgetting_follows_a_reward_that_changed():
    x = np.array([1.0, 0.5, 0.0, 0.0])  # two of four directions ever excited
    steps = [(x, 1.0)] * 500 + [(x, -1.0)] * 500
    keep, forget = _arm_run(1.0, steps), _arm_run(0.99, steps)
    idx = np.zeros(1, dtype=np.int64)
    assert abs(float(keep.predict(idx, x[None, :])[0]) - 0.0) < 0.05  # the run's mean
    assert abs(float(forget.predict(idx, x[None, :])[0]) + 1.0) < 0.05  # the latest reward


def test_forgetting_keeps_the_covariance_honest():
    """Forgetting widens what the data excites, never past the prior: an untouched
    direction keeps the prior's variance exactly, the inverse stays symmetric positive
    definite, and a stale direction's width comes back up to (not over) the prior's."""
    rng = np.random.default_rng(0)
    steps = [(np.array([1.0, *rng.normal(size=2), 0.0]), float(rng.random())) for _ in range(3000)]
    arms = _arm_run(0.99, steps)
    A = arms.A_inv[0]
    assert A[3, 3] == 1.0 and np.all(A[3, :3] == 0.0)  # never excited: the prior, exactly
    assert np.allclose(A, A.T, atol=1e-12) and np.linalg.eigvalsh(A).min() > 0
    assert np.all(np.diag(A) <= 1.0 + 1e-12)
    excited = _arm_run(0.99, steps + [(np.array([0.0, 0.0, 0.0, 1.0]), 0.0)] * 2000)
    # Direction 1 has not been seen for 2,000 steps: its variance is back at the prior's.
    assert excited.A_inv[0][1, 1] == pytest.approx(1.0, rel=1e-6)
    assert _arm_run(1.0, steps).A_inv[0][1, 1] < 0.01  # without forgetting it stays tiny


def test_no_forgetting_is_bit_identical_and_bad_values_are_refused():
    from policies.base import PolicyError
    from policies.ridge import RidgeArms

    rng = np.random.default_rng(1)
    steps = [(rng.normal(size=4), float(rng.random())) for _ in range(200)]
    a, b = _arm_run(1.0, steps), RidgeArms(4, l2=1.0)
    idx = b.indices(["a"])
    for x, y in steps:
        b.update(idx, x[None, :], np.array([y]))
    assert np.array_equal(a.A_inv, b.A_inv) and np.array_equal(a.theta, b.theta)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(PolicyError):
            RidgeArms(4, forgetting=bad)


def test_rl_dr_forgetting_configures_doubly_robust_and_survives_its_state(monkeypatch):
    from policies.doubly_robust import DoublyRobust
    from stream.config import ConfigError, load_settings
    from stream.core.policy_config import build_policy

    monkeypatch.setenv("RL_DR_FORGETTING", "0.999")
    p = build_policy("doubly_robust", "shop", load_settings())
    assert p.params()["forgetting"] == 0.999
    meta, arrays = p.state_dict()
    assert DoublyRobust.from_state(meta, arrays).params()["forgetting"] == 0.999
    monkeypatch.setenv("RL_DR_FORGETTING", "1.5")
    with pytest.raises(ConfigError):
        load_settings()
