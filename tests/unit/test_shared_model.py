"""One shared reward model per domain over candidate features (RL_SHARED_MODEL)."""

from __future__ import annotations

import numpy as np
import pytest

from policies import ContextBatch, Feedback, PolicyError, create_policy
from policies.features import FeatureHasher
from stream.config import load_settings
from stream.core.policy_config import build_policy
from stream.errors import ConfigError

H = FeatureHasher(16)


def _items(rng: np.random.Generator, n: int, names: list[str], tag: str) -> ContextBatch:
    """Events offering three of ``names``; an item's click rate is its ``quality``."""
    enc = []
    for _ in range(n):
        cands = list(rng.choice(names, size=3, replace=False))
        feats = {a: {"quality": _quality(a)} for a in cands}
        enc.append(H.encode({"x": float(rng.normal())}, cands, feats))
    return H.assemble(enc, [f"{tag}{i}" for i in range(n)])


def _quality(item: str) -> float:
    return (int(item[4:]) % 10) / 10.0


def test_a_new_item_is_scored_from_its_features():
    """What the shared model learns about items' features carries over to items it never
    saw; one model per action knows nothing about them."""
    rng = np.random.default_rng(0)
    seen = [f"item{i}" for i in range(0, 200, 2)]
    models = {m: create_policy("linucb", 16, seed=1, shared=m) for m in ("true", "false")}
    for step in range(60):
        b = _items(rng, 20, seen, f"s{step}-")
        for p in models.values():
            d = p.choose(b)
            picked = [b.actions[r] for r in d.row]
            r = (rng.random(20) < np.array([_quality(a) for a in picked])).astype(float)
            p.learn(Feedback(b, d.row, r, d.probability))
    new = _items(rng, 1, ["item901", "item905", "item909"], "new")  # quality 0.1, 0.5, 0.9
    shared = dict(zip(new.actions, models["true"].predict_rewards(new).tolist(), strict=True))
    assert shared["item901"] < shared["item905"] < shared["item909"]
    assert shared["item909"] - shared["item901"] > 0.3  # the true gap is 0.8
    assert np.all(models["false"].predict_rewards(new) == 0.0)


def test_auto_decides_at_the_first_batch_and_keeps_the_decision_in_its_state():
    rng = np.random.default_rng(1)
    described = create_policy("doubly_robust", 16, seed=0, shared="auto")
    assert described.choose(_items(rng, 5, ["item1", "item2", "item3"], "a")).pmf.shape == (15,)
    plain = create_policy("doubly_robust", 16, seed=0, shared="auto")
    plain.choose(H.assemble([H.encode({"x": 1.0}, ["a", "b"])], ["p"]))
    meta, arrays = described.state_dict()
    assert meta["state"]["shared_on"] is True and arrays["A_inv"].shape == (1, 256, 256)
    assert plain.state_dict()[0]["state"]["shared_on"] is False
    assert type(described).from_state(meta, arrays)._inputs.on is True
    meta["params"]["shared"] = "false"  # the settings changed: the state does not fit
    with pytest.raises(PolicyError):
        type(described).from_state(meta, arrays)


def test_identity_crosses_keep_what_per_action_models_learn():
    """Without candidate features a shared model still tells fixed actions apart."""
    p = create_policy("epsilon_greedy", 16, seed=0, shared="true", epsilon=0.0)
    rng = np.random.default_rng(2)
    pay = {"a": 0.2, "b": 0.8, "c": 0.5}
    for step in range(40):
        b = H.assemble(
            [H.encode({"x": float(rng.normal())}, list(pay)) for _ in range(20)],
            [f"{step}-{i}" for i in range(20)],
        )
        p.choose(b)  # decides as the service would; logging below is uniform
        row = rng.integers(0, 3, size=20) + b.offsets[:-1]  # uniform logging
        r = np.array([pay[b.actions[j]] for j in row]) + rng.normal(0, 0.05, 20)
        p.learn(Feedback(b, row, r, np.full(20, 1 / 3)))
    b = H.assemble([H.encode({"x": 0.3}, list(pay))], ["q"])
    assert np.allclose(p.predict_rewards(b), [0.2, 0.8, 0.5], atol=0.05)
    assert b.actions[int(p.choose(b).row[0])] == "b"


def test_settings_configure_the_shared_model(monkeypatch):
    s = load_settings()
    assert (s.shared_model, s.shared_dim) == ("auto", 256)
    monkeypatch.setenv("RL_SHARED_MODEL", "true")
    monkeypatch.setenv("RL_SHARED_DIM", "512")
    p = build_policy("squarecb", "shop", load_settings())
    assert p.params()["shared"] == "true" and p.params()["shared_dim"] == 512
    monkeypatch.setenv("RL_SHARED_DIM", "100")  # below 2 x RL_FEATURE_DIM + 2
    with pytest.raises(ConfigError, match="RL_SHARED_DIM"):
        load_settings()


def test_the_batch_keeps_the_candidate_features_part_of_each_row():
    enc = H.encode({"x": 2.0}, ["a", "b"], {"b": {"size": 3.0}})
    b = H.assemble([enc], ["e"])
    assert b.C is not None and b.C[0].sum() == 0.0 and abs(b.C[1]).sum() == 3.0
    assert np.allclose(b.X[1] - b.C[1], b.X[0])  # X = context + the candidate's part
    assert H.assemble([H.encode({"x": 2.0}, ["a", "b"])], ["e"]).C is None
