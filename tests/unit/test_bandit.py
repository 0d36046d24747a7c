"""`from stream import Bandit`: one domain in process, deciding and learning as the
service does; its README example runs as a doctest."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import numpy as np
import pytest

from stream import Bandit
from stream.kafka.codec import DecodeError

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    section = text.split("## In process, without Kafka", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.summarize().failed == 0 and len(test.examples) >= 6


def test_the_module_doctest_runs():
    import stream.bandit

    assert doctest.testmod(stream.bandit).failed == 0


def test_settings_come_from_defaults_environment_and_overrides(monkeypatch):
    monkeypatch.setenv("RL_EPSILON", "1.0")  # epsilon-greedy, the baseline: uniform
    from_env = Bandit()
    uniform = from_env.decide({"x": 1.0}, ["a", "b", "c", "d"])
    assert list(uniform.distribution.values()) == [0.25] * 4
    assert uniform.policy == "epsilon_greedy" and uniform.variant == "control"
    assert from_env.domains.states["default"].baseline.params()["epsilon"] == 1.0
    keyword = Bandit(epsilon=0.2)  # a keyword wins over the environment
    assert keyword.domains.states["default"].baseline.params()["epsilon"] == 0.2
    assert Bandit(feature_dim=16).hasher.n_features == 16


def test_events_the_service_would_refuse_are_refused_with_its_reason():
    b = Bandit()
    with pytest.raises(DecodeError) as exc:
        b.decide({"x": 1.0}, [])
    assert exc.value.code == "bad_candidates"  # the dead-letter reason the service gives
    b.decide({"x": 1.0}, ["a"], "e1")
    with pytest.raises(DecodeError):
        b.learn("e1", 7.0)  # outside RL_REWARD_MIN..RL_REWARD_MAX


def test_rewards_join_once_and_learn_on_the_update_cadence():
    b = Bandit(update_interval=3)
    for i in range(3):
        b.decide({"x": float(i)}, ["a", "b"], f"e{i}")
    policy = b.domains.states["default"].baseline
    assert [b.learn(f"e{i}", 1.0) for i in range(2)] == ["joined", "joined"]
    assert policy.n_learned == 0  # two of RL_UPDATE_INTERVAL=3 buffered
    assert b.learn("e2", 0.0) == "joined" and policy.n_learned == 3
    assert b.learn("e2", 1.0) == "duplicate" and b.learn("nope", 1.0) == "unknown"


def test_a_decision_whose_window_closed_learns_the_default_reward(monkeypatch):
    b = Bandit(reward_wait_s=0.01, update_interval=1, default_reward=0.0)
    b.decide({"x": 1.0}, ["a", "b"], "old")
    import time

    time.sleep(0.05)
    assert b.learn("old", 1.0) == "late"
    assert b.domains.states["default"].expired == 1
    assert b.domains.states["default"].baseline.n_learned == 1  # learned 0.0


def test_state_round_trips_exactly_with_pending_decisions():
    b = Bandit("shop", update_interval=1)
    rng = np.random.default_rng(0)
    for i in range(50):
        c = b.decide({"u": float(rng.random()), "c": f"v{i % 3}"}, ["a", "b", "c"], f"e{i}")
        if i < 45:
            b.learn(f"e{i}", float(c.action == "b"))
    copy = Bandit.from_state(b.state(), update_interval=1)
    assert copy.domain == "shop" and len(copy.joins) == 5  # e45..e49 still pending
    m0, a0 = b.domains.states["shop"].baseline.state_dict()
    m1, a1 = copy.domains.states["shop"].baseline.state_dict()
    assert m0 == m1 and all(np.array_equal(a0[k], a1[k]) for k in a0)
    assert copy.learn("e47", 1.0) == "joined"
    ctx = {"u": 0.5, "c": "v1"}
    assert copy.decide(ctx, ["a", "b", "c"], "z") == b.decide(ctx, ["a", "b", "c"], "z")


def test_it_learns_which_candidate_pays():
    b = Bandit(update_interval=10)
    rng = np.random.default_rng(1)
    for i in range(600):
        c = b.decide({"x": 1.0}, ["a", "b"], f"e{i}")
        b.learn(f"e{i}", float(rng.random() < (0.8 if c.action == "b" else 0.2)))
    assert b.decide({"x": 1.0}, ["a", "b"], "last").distribution["b"] > 0.9


def _quality(item: str) -> float:
    return (int(item[4:]) % 10) / 10.0


def test_described_candidates_share_one_model_and_a_new_one_is_scored_from_its_features():
    """Through the in-process API (the service's own path): events carrying
    candidate_features make the domain's model one shared model (RL_SHARED_MODEL=auto);
    what it learns about items' features ranks items it never saw, and survives the state."""
    b = Bandit(update_interval=10, epsilon=0.2)
    rng = np.random.default_rng(3)
    seen = [f"item{i}" for i in range(0, 100, 2)]
    for i in range(1500):
        items = list(rng.choice(seen, size=3, replace=False))
        c = b.decide({"x": 1.0}, items, f"e{i}", {a: {"quality": _quality(a)} for a in items})
        b.learn(f"e{i}", float(rng.random() < _quality(c.action)))
    assert b._state.baseline.state_dict()[0]["state"]["shared_on"] is True
    new = ["item901", "item905", "item909"]  # quality 0.1, 0.5, 0.9, never decided before
    features = {a: {"quality": _quality(a)} for a in new}
    choice = b.decide({"x": 1.0}, new, "new", features)
    assert max(choice.distribution, key=choice.distribution.__getitem__) == "item909"
    copy = Bandit.from_state(b.state(), update_interval=10, epsilon=0.2)
    assert copy.decide({"x": 1.0}, new, "again", features) == b.decide(
        {"x": 1.0}, new, "again", features
    )


def test_the_policy_named_is_the_policy_that_serves():
    served = Bandit("d", policy="linucb")._state.baseline
    assert type(served).__name__ == "LinUCB"
    assert type(Bandit("d")._state.baseline).__name__ == "EpsilonGreedy"


def test_rl_policy_alone_warns_that_it_serves_nothing(monkeypatch):
    from stream.config import load_settings, policy_trap

    monkeypatch.setenv("RL_POLICY", "linucb")
    assert "RL_BASELINE_POLICY=epsilon_greedy" in (policy_trap(load_settings()) or "")
    monkeypatch.setenv("ENABLE_RL_ADVANCED", "true")
    assert policy_trap(load_settings()) is None
    monkeypatch.delenv("RL_POLICY")
    monkeypatch.delenv("ENABLE_RL_ADVANCED")
    assert policy_trap(load_settings()) is None


def test_a_policy_named_with_rollout_switched_off_in_words_still_serves():
    served = Bandit("d", policy="linucb", enable_rl_advanced="false")._state.baseline
    assert type(served).__name__ == "LinUCB"
