"""Replay of a joined log whose candidates carry features: the policies and the reward
model replay them as the service learned them, with one shared model."""

from __future__ import annotations

import math

import numpy as np

from policies.features import FeatureHasher
from stream.config import load_settings
from stream.offline.replay import Replayer


def _records(n: int) -> list[dict]:
    h, rng = FeatureHasher(64), np.random.default_rng(0)
    out = []
    for i in range(n):
        items = [f"item{j}" for j in rng.choice(50, size=3, replace=False)]
        quality = {a: (int(a[4:]) % 10) / 10.0 for a in items}
        enc = h.encode({"x": 1.0}, items, {a: {"quality": q} for a, q in quality.items()})
        chosen = int(rng.integers(3))
        out.append(
            {
                "event_id": f"e{i}",
                "domain": "shop",
                "n_features": 64,
                "context": [list(enc.context[0]), list(enc.context[1])],
                "candidates": items,
                "candidate_features": {
                    a: [list(f[0]), list(f[1])] for a, f in (enc.candidate_features or {}).items()
                },
                "chosen": chosen,
                "probability": 1 / 3,
                "reward": float(rng.random() < quality[items[chosen]]),
            }
        )
    return out


def test_replay_learns_described_candidates_with_one_shared_model():
    rep = Replayer(["linucb", "squarecb"], load_settings())
    rep.run(_records(600))
    for name in ("linucb", "squarecb"):
        assert rep._policies[("shop", name)].state_dict()[0]["state"]["shared_on"] is True
        dr = rep.result().summary()["policies"][name]["dr"]
        # The best of three random items pays 0.70 on average; uniform logging 0.45.
        assert math.isfinite(dr["value"]) and dr["value"] > 0.5
    assert rep._models["shop"].state_dict()[0]["state"]["shared_on"] is True
