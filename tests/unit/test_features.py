from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from policies.base import PolicyError
from policies.features import FeatureHasher, FeatureIndex


def dense(h: FeatureHasher, ctx, cands=("a",), cf=None):
    return h.assemble([h.encode(ctx, list(cands), cf)], ["k"]).X


def test_bias_and_bounded_dimension():
    h = FeatureHasher(n_features=16)
    X = dense(h, {f"k{i}": float(i) for i in range(500)})
    assert X.shape == (1, 16)
    assert X[0, 0] == 1.0


def test_missing_none_and_new_keys_are_handled():
    h = FeatureHasher(n_features=32)
    base = dense(h, {"x": 2.0})
    assert np.array_equal(dense(h, {"x": 2.0, "y": None}), base)
    assert np.count_nonzero(dense(h, {})) == 1  # only the bias
    assert not np.array_equal(dense(h, {"x": 2.0, "never_seen_before": "v"}), base)


def test_numbers_bools_and_categories():
    h = FeatureHasher(n_features=1024)
    x1 = dense(h, {"n": 3.0})
    x2 = dense(h, {"n": 6.0})
    assert np.allclose(x2[0, 1:], 2 * x1[0, 1:])  # numbers are linear
    assert np.count_nonzero(dense(h, {"b": False})[0, 1:]) == 0
    assert np.count_nonzero(dense(h, {"b": True})[0, 1:]) == 1
    de, fr = dense(h, {"c": "de"}), dense(h, {"c": "fr"})
    assert np.abs(de[0, 1:]).sum() == 1.0 and np.abs(fr[0, 1:]).sum() == 1.0
    assert not np.array_equal(de, fr)  # one slot per category value


def test_colliding_keys_sum():
    h = FeatureHasher(n_features=2)  # one hashed slot: everything collides
    x = dense(h, {"a": 1.0, "b": 2.0})
    sa, sb = h._slot("a")[1], h._slot("b")[1]
    assert x[0, 1] == pytest.approx(sa * 1.0 + sb * 2.0)


def test_candidate_features_only_on_their_row():
    h = FeatureHasher(n_features=256)
    X = dense(h, {"x": 1.0}, cands=("a", "b"), cf={"a": {"cost": 5.0}})
    diff = X[0] - X[1]
    assert np.count_nonzero(diff) == 1 and np.abs(diff).sum() == 5.0


def test_candidate_features_without_context_features_keep_their_values():
    # No context feature at all: the candidate's value lands whole (a float matrix).
    h = FeatureHasher(n_features=256)
    X = dense(h, {}, cands=("a", "b"), cf={"a": {"cost": 0.25}})
    assert X.dtype == np.float64
    assert np.abs(X[0, 1:]).sum() == 0.25 and np.abs(X[1, 1:]).sum() == 0.0


def test_hash_is_stable_across_processes():
    code = (
        "from policies.features import FeatureHasher;"
        "h=FeatureHasher(64, seed=3);print(h._slot('country=de'), h._slot('age'))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(i)},
        ).stdout
        for i in (1, 2)
    }
    assert len(outs) == 1
    h = FeatureHasher(64, seed=3)
    assert outs.pop().strip() == f"{h._slot('country=de')} {h._slot('age')}"


def test_hash_is_scikit_learns_murmurhash3():
    # Checkpointed models and logged decisions depend on these exact hashes: mmh3 must stay
    # bit-identical to scikit-learn's murmurhash3_32, which earlier versions used.
    import mmh3
    from sklearn.utils import murmurhash3_32

    keys = ["", "a", "country=de", "\x1fc:price", "dom7/offset_tree", "ü€\x00x", "9" * 300]
    for key in keys:
        for seed in (0, 3, 2**31 - 1):
            assert mmh3.hash(key, seed) == murmurhash3_32(key, seed=seed)
            assert mmh3.hash(key, seed, False) == murmurhash3_32(key, seed=seed, positive=True)


def test_cache_is_bounded():
    h = FeatureHasher(n_features=64, cache_size=100)
    for i in range(1000):
        dense(h, {"user": f"u{i}"})
    assert len(h._cache) <= 100


def test_assemble_layout():
    h = FeatureHasher(n_features=8)
    evs = [h.encode({"x": 1.0}, ["a", "b", "c"]), h.encode({}, ["z"])]
    b = h.assemble(evs, ["e1", "e2"])
    assert b.offsets.tolist() == [0, 3, 4]
    assert b.actions == ["a", "b", "c", "z"]
    assert b.row_event().tolist() == [0, 0, 0, 1]


def test_too_small_dimension_rejected():
    with pytest.raises(PolicyError):
        FeatureHasher(n_features=1)


# -- a domain's own slots (FeatureIndex) ---------------------------------------------------
def test_keys_that_fit_get_their_own_slots_in_order_of_first_sight():
    from policies.features import FeatureIndex

    h = FeatureHasher(16)
    index = FeatureIndex(16)
    ctx = {f"k{i}": float(i + 1) for i in range(10)} | {"color": "red", "off": 0.0}
    idx, val = h.sparse(ctx, index=index)
    assert idx == tuple(range(1, 12)) and val == (*[float(i + 1) for i in range(10)], 1.0)
    assert index.tokens() == [*(f"k{i}" for i in range(10)), "color=red"]  # 0.0 takes none
    assert h.sparse({"color": "blue", "k3": 2.0}, index=index) == ((12, 4), (1.0, 2.0))
    # Candidate features have their own namespace: a candidate's "k0" is another token.
    enc = h.encode({"k0": 1.0}, ["a"], {"a": {"k0": 5.0}}, index=index)
    assert enc.context == ((1,), (1.0,)) and enc.candidate_features == {"a": ((13,), (5.0,))}


def test_past_capacity_new_keys_hash_as_without_an_index():
    from policies.features import FeatureIndex

    h = FeatureHasher(4)
    index = FeatureIndex(4)
    h.sparse({"a": 1.0, "b": 1.0, "c": 1.0}, index=index)
    assert index.tokens() == ["a", "b", "c"]  # slots 1..3: full
    assert h.sparse({"d": 2.0}, index=index) == h.sparse({"d": 2.0})  # hashed, signed
    assert index.tokens() == ["a", "b", "c"]


def test_without_an_index_encoding_is_unchanged():
    h = FeatureHasher(64)
    ctx = {"age": 31.0, "country": "de", "vip": True, "none": None, "clip": 1e300}
    got = h.sparse(ctx)
    want = []
    for k, v in ctx.items():
        if v is None:
            continue
        token = f"{k}={v}" if isinstance(v, str) else k
        j, s = h._slot(token)
        want.append((j, s if isinstance(v, str) else s * min(1e6, max(-1e6, float(v)))))
    assert got == (tuple(j for j, _ in want), tuple(x for _, x in want))


def test_a_saved_index_is_validated():
    from policies.features import FeatureIndex

    assert FeatureIndex(4, ["a", "b"]).slots == {"a": 1, "b": 2}
    for bad in (["a", "a"], ["a", "b", "c", "d"]):
        with pytest.raises(PolicyError):
            FeatureIndex(4, bad)


def test_indexes_with_the_same_tokens_share_one_table_and_never_each_others_changes():
    h = FeatureHasher(8)
    one, two, other = FeatureIndex(8), FeatureIndex(8), FeatureIndex(8)
    h.sparse({"a": 1.0, "b": "x"}, index=one)
    h.sparse({"a": 2.0, "b": "x"}, index=two)
    h.sparse({"b": "x", "a": 1.0}, index=other)
    assert one.slots is two.slots  # one table for both domains
    assert other.slots is not one.slots and other.tokens() == ["b=x", "a"]
    assert FeatureIndex(8, ["a", "b=x"]).slots is one.slots  # a restored index too
    h.sparse({"c": 1.0}, index=two)
    assert one.tokens() == ["a", "b=x"] and two.tokens() == ["a", "b=x", "c"]
    assert h.sparse({"c": 1.0, "a": 1.0}, index=one) == ((3, 1), (1.0, 1.0))
    assert one.slots is two.slots  # the same tokens in the same order again
