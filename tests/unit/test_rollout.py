"""Rollout split, shadow evaluation and alerts, without a broker."""

from __future__ import annotations

import numpy as np
import pytest

from policies.features import FeatureHasher
from stream.config import load_settings
from stream.core.domains import Domains
from stream.core.join import Pending
from stream.kafka.codec import ContextEvent
from stream.observe.metrics import Metrics


def domains(**kw):
    s = load_settings(**kw)
    return Domains(s, FeatureHasher(s.feature_dim, seed=s.seed))


def test_a_rollout_of_20_percent_sends_20_percent_and_units_never_switch():
    doms = domains(enable_rl_advanced=True, rollout_percentage=0.2, policy="doubly_robust")
    events = [ContextEvent(f"e{i}", "shop", {"x": 1.0}, ["a", "b"]) for i in range(10000)]
    share = np.mean([doms.variant_of("shop", e) == "treatment" for e in events])
    assert 0.18 <= share <= 0.22, share
    # A unit keeps its arm over every event it sends, and on a fresh instance.
    again = domains(enable_rl_advanced=True, rollout_percentage=0.2, policy="doubly_robust")
    for u in range(500):
        evs = [ContextEvent(f"u{u}-{j}", "shop", {}, ["a"], unit_id=f"user{u}") for j in range(5)]
        arms = {doms.variant_of("shop", e) for e in evs} | {
            again.variant_of("shop", e) for e in evs
        }
        assert len(arms) == 1


def test_rollout_serves_each_variant_by_its_own_policy_and_both_learn():
    doms = domains(
        enable_rl_advanced=True, rollout_percentage=0.5, policy="linucb", rollout_domains=["shop"]
    )
    other = doms.get_or_create("other")
    assert other is not None and other.treatment is None  # not a rollout domain
    st = doms.get_or_create("shop")
    assert st is not None and st.treatment is not None
    events = [ContextEvent(f"e{i}", "shop", {"x": 1.0}, ["a", "b"]) for i in range(200)]
    served = {s.variant: s for s in doms.decide(st, events)}
    assert set(served) == {"control", "treatment"}
    assert served["treatment"].policy.name == "linucb"
    assert served["control"].policy.name == "epsilon_greedy"
    for s in served.values():
        for i, e in enumerate(s.events):
            p = Pending("shop", e.event_id, s.encoded[i], 0, 0.5, s.policy.name, s.variant, 0, 1)
            doms.learner.add(st, p, 1.0, 0.0)
    doms.learner.learn(0.0, force=True)
    assert st.baseline.n_learned == st.treatment.n_learned == 200  # every reward, off-policy


def test_a_shadow_identical_to_the_logging_policy_is_estimated_at_the_on_policy_mean():
    doms = domains(
        enable_rl_shadow_eval=True, shadow_policies=["epsilon_greedy", "linucb"], update_interval=10
    )
    st = doms.get_or_create("d")
    assert st is not None and set(st.shadows) == {"epsilon_greedy", "linucb"}
    rng = np.random.default_rng(0)
    rewards = []
    for t in range(300):
        evs = [
            ContextEvent(f"e{t}-{i}", "d", {"x": float(rng.random())}, ["a", "b", "c"])
            for i in range(10)
        ]
        (s,) = doms.decide(st, evs)
        for i, e in enumerate(s.events):
            chosen = int(s.decisions.row[i] - 3 * i)
            r = float(rng.random() < (0.3, 0.6, 0.4)[chosen])
            rewards.append(r)
            p = Pending(
                "d",
                e.event_id,
                s.encoded[i],
                chosen,
                float(s.decisions.probability[i]),
                "epsilon_greedy",
                "control",
                0,
                1,
            )
            doms.learner.add(st, p, r, 0.0)
        doms.learner.learn(0.0, force=True)
    on_policy = float(np.mean(rewards))
    shadow = st.estimates["shadow:epsilon_greedy"].result()
    served = st.estimates["served"].result()
    for est in (shadow, served):
        for name in ("ips", "snips", "dr"):
            e = est[name]
            assert e.n == 3000
            assert e.low <= on_policy <= e.high, (name, e, on_policy)
    assert shadow["ips"].value == pytest.approx(on_policy)  # identical policy: w = 1
    assert np.isfinite(st.estimates["shadow:linucb"].result()["dr"].value)


def test_a_latency_breach_raises_then_clears_an_alert():
    m = Metrics(load_settings(latency_threshold_ms=20.0, enable_rl_monitoring=True))
    m.decided("d", "control", [1.0] * 50, [f"e{i}" for i in range(50)])
    m.report(1.0, {}, 100.0, {})
    assert not m.alerts["latency"].active
    m.decided("d", "control", [35.0] * 60, [f"slow{i}" for i in range(60)])
    events = m.report(2.0, {"d": 3}, 100.0, {})
    assert m.alerts["latency"].active
    assert [a["alert"] for a in events[0]["alerts"]] == ["latency"]
    assert events[0]["pending_joins"] == 3 and events[0]["decisions"] == 60
    assert m.registry.get_sample_value("bandit_alert_active", {"alert": "latency"}) == 1
    assert m.slow_count == 60 and len(m.slowest()) == 10
    assert events[0]["slow_decisions"] == 60
    top = events[0]["slowest"][0]
    assert top["latency_ms"] == 35.0 and top["event_id"].startswith("slow")
    m.decided("d", "control", [18.0] * 50, [f"e{i}" for i in range(50)])
    m.report(3.0, {}, 100.0, {})
    assert m.alerts["latency"].active  # hysteresis: under the threshold, not under 80% of it
    m.decided("d", "control", [2.0] * 50, [f"e{i}" for i in range(50)])
    m.report(4.0, {}, 100.0, {})
    assert not m.alerts["latency"].active
    assert m.registry.get_sample_value("bandit_alert_active", {"alert": "latency"}) == 0


def test_metrics_event_has_reward_intervals_and_the_treatment_difference():
    m = Metrics(load_settings())
    rng = np.random.default_rng(1)
    for _ in range(400):
        m.reward("d", "joined", "control", float(rng.random() < 0.4))
        m.reward("d", "joined", "treatment", float(rng.random() < 0.6))
    m.reward("d", "late")
    m.reward("d", "duplicate")
    m.expired("d", learned=True)
    (ev,) = m.report(10.0, {}, 50.0, {})
    c, t = ev["reward"]["control"], ev["reward"]["treatment"]
    assert c["n"] == t["n"] == 400 and c["low"] < 0.4 < c["high"] and t["low"] < 0.6 < t["high"]
    d = ev["treatment_minus_control"]
    assert d["low"] < 0.2 < d["high"] and d["low"] > 0
    assert (ev["late_rewards"], ev["duplicate_rewards"], ev["expired_learned_default"]) == (1, 1, 1)


def test_latency_histogram_buckets_a_batch_like_prometheus():
    m = Metrics(load_settings())
    m.decided("d", "control", [0.3, 1.0, 1.5, 7.0, 2000.0], ["a", "b", "c", "d", "e"])
    get = m.registry.get_sample_value
    name = "bandit_decision_latency_seconds_bucket"
    assert get(name, {"le": "+Inf"}) == 0  # bucketed once per turn, at its end
    m.end_turn()
    assert get(name, {"le": "0.0005"}) == 1
    assert get(name, {"le": "0.001"}) == 2  # le: a value equal to the bound is inside
    assert get(name, {"le": "0.002"}) == 3
    assert get(name, {"le": "0.01"}) == 4
    assert get(name, {"le": "+Inf"}) == 5
    assert get("bandit_decision_latency_seconds_count", {}) == 5
    assert get("bandit_decision_latency_seconds_sum", {}) == pytest.approx(2.0098)
    assert get("bandit_decisions_total", {"domain": "d", "variant": "control"}) == 5
    m.forget({"d"})
    assert get("bandit_decisions_total", {"domain": "d", "variant": "control"}) is None
