"""One check-suite run over every registered policy (in the spirit of River's estimator checks)."""

from __future__ import annotations

import numpy as np
import pytest

from policies import POLICIES, ContextBatch, Feedback, Policy, create_policy
from policies.features import FeatureHasher

D = 16


def make_batch(
    rng: np.random.Generator, n: int, cands: list[list[str]] | None = None, prefix: str = "e"
) -> ContextBatch:
    h = FeatureHasher(D)
    cands = cands or [["a", "b", "c"][: 1 + i % 3] for i in range(n)]
    enc = [
        h.encode(
            {"x": float(rng.normal()), "c": f"v{rng.integers(3)}"},
            cands[i],
            {"b": {"size": float(rng.random())}} if i % 2 else None,  # some candidates described
        )
        for i in range(n)
    ]
    return h.assemble(enc, [f"{prefix}{i}" for i in range(n)])


def feedback(batch: ContextBatch, dec, rng) -> Feedback:
    return Feedback(batch, dec.row.copy(), rng.random(batch.n_events), dec.probability.copy())


# Every policy with a reward model also runs with one shared model over candidate features.
SHARED = ["doubly_robust", "epsilon_greedy", "linear_ts", "linucb", "offset_tree", "squarecb"]


@pytest.fixture(params=sorted(POLICIES) + [f"{n}+shared" for n in SHARED])
def name(request) -> str:
    return request.param


def build(name: str, seed: int) -> Policy:
    base, _, shared = name.partition("+")
    if shared:
        return create_policy(base, D, seed=seed, shared="true", shared_dim=48)
    return create_policy(name, D, seed=seed)


def test_distribution_is_valid_and_logged_probability_exact(name):
    rng = np.random.default_rng(0)
    p = build(name, seed=1)
    for _ in range(5):
        batch = make_batch(rng, 50)
        d = p.choose(batch)
        sums = np.add.reduceat(d.pmf, batch.offsets[:-1])
        assert np.allclose(sums, 1.0, atol=1e-12)
        assert np.all(d.pmf >= 0)
        assert np.array_equal(d.probability, d.pmf[d.row])
        assert np.all(d.probability > 0)
        assert np.all((d.row >= batch.offsets[:-1]) & (d.row < batch.offsets[1:]))
        p.learn(feedback(batch, d, rng))


def test_same_seed_same_inputs_same_decisions(name):
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    p1, p2 = build(name, seed=5), build(name, seed=5)
    for _ in range(3):
        b1, b2 = make_batch(rng1, 40), make_batch(rng2, 40)
        d1, d2 = p1.choose(b1), p2.choose(b2)
        assert np.array_equal(d1.row, d2.row) and np.array_equal(d1.pmf, d2.pmf)
        p1.learn(feedback(b1, d1, rng1))
        p2.learn(feedback(b2, d2, rng2))


def test_state_round_trip_gives_identical_later_decisions(name):
    rng = np.random.default_rng(4)
    p = build(name, seed=2)
    for _ in range(4):
        b = make_batch(rng, 60)
        p.learn(feedback(b, p.choose(b), rng))
    meta, arrays = p.state_dict()
    q = type(p).from_state(meta, {k: v.copy() for k, v in arrays.items()})
    assert q.n_learned == p.n_learned == 240
    b = make_batch(rng, 100, prefix="later")
    dp, dq = p.choose(b), q.choose(b)
    assert np.array_equal(dp.row, dq.row) and np.allclose(dp.pmf, dq.pmf, rtol=0, atol=1e-12)


def test_learn_does_not_mutate_inputs(name):
    rng = np.random.default_rng(5)
    p = build(name, seed=0)
    b = make_batch(rng, 30)
    fb = feedback(b, p.choose(b), rng)
    before = (
        b.X.copy(),
        list(b.actions),
        b.offsets.copy(),
        fb.row.copy(),
        fb.reward.copy(),
        fb.probability.copy(),
    )
    p.learn(fb)
    after = (b.X, b.actions, b.offsets, fb.row, fb.reward, fb.probability)
    for x, y in zip(before, after, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_choosing_never_changes_an_earlier_state(name):
    """A checkpoint references a policy's state arrays while it is written, and the domain
    keeps deciding meanwhile (new actions included): deciding must leave them alone."""
    import orjson

    rng = np.random.default_rng(8)
    p = build(name, seed=0)
    for _ in range(3):
        b = make_batch(rng, 40)
        p.learn(feedback(b, p.choose(b), rng))
    meta, arrays = p.state_dict()
    frozen_meta = orjson.dumps(meta, option=orjson.OPT_SERIALIZE_NUMPY)
    frozen = {k: v.copy() for k, v in arrays.items()}
    for step in range(4):
        cands = [[f"new{step}-{i % 2}", "a", "c"][: 1 + (i % 3)] for i in range(40)]
        p.choose(make_batch(rng, 40, cands=cands, prefix=f"s{step}-"))
        p.distribution(make_batch(rng, 10, prefix=f"d{step}-"))
    assert orjson.dumps(meta, option=orjson.OPT_SERIALIZE_NUMPY) == frozen_meta
    for k, v in frozen.items():
        assert arrays[k].shape == v.shape and np.array_equal(arrays[k], v), k


def test_candidate_lists_that_change_between_events(name):
    rng = np.random.default_rng(6)
    p = build(name, seed=0)
    for step in range(5):
        cands = [[f"act{(step + j) % 9}" for j in range(1 + (i % 4))] for i in range(30)]
        b = make_batch(rng, 30, cands=cands, prefix=f"s{step}-")
        d = p.choose(b)
        chosen = [b.actions[r] for r in d.row]
        assert all(c in cands[i] for i, c in enumerate(chosen))
        p.learn(feedback(b, d, rng))


def test_bad_state_is_rejected(name):
    from policies.base import PolicyError

    rng = np.random.default_rng(7)
    p = build(name, seed=0)
    b = make_batch(rng, 20)
    p.learn(feedback(b, p.choose(b), rng))
    meta, arrays = p.state_dict()
    cls = type(p)
    with pytest.raises(PolicyError):
        cls.from_state({**meta, "version": 999}, arrays)
    with pytest.raises(PolicyError):
        cls.from_state({**meta, "policy": "other"}, arrays)
    key = next(iter(arrays))
    with pytest.raises(PolicyError):
        cls.from_state(meta, {**arrays, key: arrays[key][:-1]})
    bad = {k: v.copy() for k, v in arrays.items()}
    f = next(k for k, v in bad.items() if v.dtype.kind == "f")
    bad[f].flat[0] = np.nan
    with pytest.raises(PolicyError):
        cls.from_state(meta, bad)


def test_every_candidate_gets_at_least_the_floor(name):
    rng = np.random.default_rng(8)
    p = build(name, seed=0)
    floor = getattr(p, "floor", getattr(p, "epsilon", None))
    assert floor is not None and floor > 0, "every policy must explore"
    for step in range(20):
        b = make_batch(rng, 40, prefix=f"f{step}-")
        d = p.choose(b)
        k = np.repeat(b.sizes, b.sizes)
        assert np.all(d.pmf >= floor / k - 1e-12)
        # Reward one action heavily so greedy policies become confident.
        fb = feedback(b, d, rng)
        fb.reward[:] = [1.0 if b.actions[r] == "a" else 0.0 for r in d.row]
        p.learn(fb)


def test_an_event_decides_the_same_in_any_batch_layout(name):
    """Uniform-layout fast paths and the general path agree exactly."""
    rng = np.random.default_rng(10)
    p = build(name, seed=4)
    for _ in range(3):
        b = make_batch(rng, 30)
        p.learn(feedback(b, p.choose(b), rng))
    h = FeatureHasher(D)
    ctx = {"x": 0.3, "c": "v1"}
    alone = h.assemble([h.encode(ctx, ["a", "b", "c"])] * 4, [f"k{i}" for i in range(4)])
    mixed = h.assemble(
        [h.encode(ctx, ["a", "b", "c"]), h.encode(ctx, ["a"])] * 2, ["k0", "z0", "k2", "z1"]
    )
    da, dm = p.choose(alone), p.choose(mixed)
    assert da.row[0] == dm.row[0] and da.row[2] - 6 == dm.row[2] - 4
    assert np.array_equal(da.pmf[:3], dm.pmf[:3])
