"""SquareCB's inverse-gap weighting, its gamma schedule and its settings."""

from __future__ import annotations

import numpy as np

from policies import ContextBatch, Feedback
from policies.squarecb import SquareCB
from stream.config import load_settings
from stream.core.policy_config import build_policy
from tests.builders import context_batch


def _batch(n: int, actions: list[str], tag: str) -> ContextBatch:
    rng = np.random.default_rng(len(tag))
    X = np.hstack([np.ones((n, 1)), rng.random((n, 2))])
    return context_batch(X, actions, tag)


def _trained() -> SquareCB:
    p = SquareCB(3, gamma_scale=5.0, gamma_exponent=0.5, floor=0.0, seed=1)
    rng = np.random.default_rng(0)
    for s in range(10):
        b = _batch(20, ["a", "b", "c", "d"], f"t{s}-")
        d = p.choose(b)
        r = (rng.random(20) < np.array([0.2, 0.7, 0.4, 0.6])[d.row % 4]).astype(float)
        p.learn(Feedback(b, d.row, r, d.probability))
    return p


def test_probabilities_are_the_inverse_gap_weights_of_the_predictions():
    p = _trained()
    b = _batch(5, ["a", "b", "c", "d"], "q")
    pmf = p.choose(b).pmf.reshape(5, 4)
    scores = p.predict_rewards(b).reshape(5, 4)
    gamma = 5.0 * (1 + 200) ** 0.5
    assert p.gamma == gamma
    for s, got in zip(scores, pmf, strict=True):
        best = int(np.argmax(s))
        want = 1.0 / (4 + gamma * (s[best] - s))
        want[best] = 1.0 - (want.sum() - want[best])
        assert np.allclose(got, want, rtol=0, atol=1e-12)


def test_tied_best_candidates_share_the_rest_evenly_and_the_floor_is_mixed_in():
    p = SquareCB(1, floor=0.0)
    b = context_batch(np.ones((1, 1)), keys=["e"])
    assert p.choose(b).pmf.tolist() == [1 / 3, 1 / 3, 1 / 3]  # untrained: all tied
    p = _trained()
    q = _batch(3, ["a", "b", "c", "d"], "f")
    plain = p.choose(q).pmf
    p.floor = 0.2
    assert np.allclose(p.choose(q).pmf, 0.8 * plain + 0.05, rtol=0, atol=1e-12)


def test_gamma_grows_with_the_events_learned_and_survives_the_state():
    p = _trained()
    b = _batch(5, ["a", "b", "c", "d"], "g")
    before = p.choose(b).pmf
    again = SquareCB.from_state(*p.state_dict())
    assert np.array_equal(again.choose(b).pmf, before)
    p.n_learned *= 4  # the same models, four times the evidence: gamma doubles
    after = p.choose(b).pmf
    best = before.reshape(5, 4).argmax(axis=1)
    assert np.all(
        after.reshape(5, 4)[np.arange(5), best] > before.reshape(5, 4)[np.arange(5), best]
    )


def test_settings_configure_squarecb(monkeypatch):
    monkeypatch.setenv("RL_SQUARECB_GAMMA_SCALE", "40")
    monkeypatch.setenv("RL_SQUARECB_GAMMA_EXPONENT", "0.25")
    p = build_policy("squarecb", "shop", load_settings())
    assert isinstance(p, SquareCB)
    assert (p.gamma_scale, p.gamma_exponent, p.floor) == (40.0, 0.25, 0.01)
