"""The service end to end over a real broker: decide, join, learn, expire, skip bad input."""

from __future__ import annotations

import math
import time

import orjson
import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def _learned(running, domain: str = "d1") -> int:
    state = running.service.domains.states.get(domain)
    return state.baseline.n_learned if state else 0


def test_one_decision_per_context_with_exact_probabilities(
    settings_factory, start_service, client_factory
):
    settings = settings_factory()
    running = start_service(settings)
    client = client_factory(settings)
    sent = {}
    t0 = time.time()
    for i in range(200):
        domain = f"dom{i % 3}"
        cands = [f"c{j}" for j in range(1 + i % 5)]
        sent[f"e{i}"] = (domain, cands)
        client.context(
            f"e{i}",
            domain=domain,
            candidates=cands,
            context={"n": i / 10, "cat": f"v{i % 4}", "flag": i % 2 == 0, "gone": None},
        )
    decisions = client.decisions(200)
    t1 = time.time()
    assert len(decisions) == 200
    assert sorted(d["event_id"] for d in decisions) == sorted(sent)
    for d in decisions:
        domain, cands = sent[d["event_id"]]
        assert d["domain"] == domain
        assert d["action"] in cands
        assert set(d["probabilities"]) == set(cands)
        assert d["probability"] == d["probabilities"][d["action"]]
        assert math.isclose(sum(d["probabilities"].values()), 1.0, abs_tol=1e-9)
        assert d["probability"] > 0
        assert d["policy"] == "epsilon_greedy"
        assert d["variant"] == "control"
        assert d["policy_version"] == 0
        # Consumed -> produced lies within the exchange; one clock, so no slack needed.
        assert 0 <= d["latency_ms"] <= (t1 - t0) * 1000
        assert t0 <= d["timestamp"] <= t1
    assert running.service.stats.decisions == 200


def test_rewards_join_and_each_is_learned_once(settings_factory, start_service, client_factory):
    settings = settings_factory(update_interval=3, reward_early_wait_s=0.5)
    running = start_service(settings)
    client = client_factory(settings)
    for i in range(40):
        client.context(f"e{i}")
    decisions = client.decisions(40)
    assert len(decisions) == 40
    # 25 distinct rewards, 10 of them sent twice, plus 5 for events never decided.
    for i in range(25):
        client.reward(f"e{i}", 1.0 if i % 2 else 0.0)
    for i in range(10):
        client.reward(f"e{i}", 1.0)
    for i in range(5):
        client.reward(f"never-{i}", 1.0)
    client.flush()
    stats = running.service.stats
    wait_for(
        lambda: stats.rewards_joined + stats.duplicate_rewards + stats.early_rewards >= 40,
        what="all rewards consumed",
    )
    wait_for(lambda: _learned(running) == 25, what="the buffered rewards learned")
    assert client.learned_before_marker(lambda: _learned(running)) == 25  # duplicates: never
    assert stats.rewards_joined == 26  # with the marker's
    assert stats.duplicate_rewards == 10
    wait_for(lambda: stats.unknown_rewards == 5, what="early rewards to give up")
    state = running.service.domains.states["d1"]
    assert state.reward_sum == 13.0  # 12 and the marker's 1
    # Later decisions carry the new policy version.
    client.context("after")
    later = [d for d in client.decisions(1) if d["event_id"] == "after"]
    assert later[0]["policy_version"] == 26


def test_window_expiry_learns_the_default_reward(settings_factory, start_service, client_factory):
    settings = settings_factory(reward_wait_s=4.0, default_reward=0.25)
    running = start_service(settings)
    client = client_factory(settings)
    for i in range(10):
        client.context(f"e{i}")
    client.decisions(10)
    client.reward("e0", 1.0)  # joins in time
    client.flush()
    stats = running.service.stats
    wait_for(lambda: stats.expired == 9, what="expiry of the unrewarded decisions")
    wait_for(lambda: _learned(running) == 10, what="default rewards learned")
    assert running.service.domains.states["d1"].expired == 9
    assert len(running.service.joins) == 0
    client.reward("e5", 1.0)  # too late: counted, never learned
    client.flush()
    wait_for(lambda: stats.late_rewards == 1, what="the late reward counted")
    assert client.learned_before_marker(lambda: _learned(running)) == 10
    assert stats.rewards_joined == 2  # e0 and the marker


def test_default_reward_none_drops_expired_decisions(
    settings_factory, start_service, client_factory
):
    settings = settings_factory(reward_wait_s=3.0, default_reward=None)  # the marker makes it
    running = start_service(settings)
    client = client_factory(settings)
    for i in range(5):
        client.context(f"e{i}")
    client.decisions(5)
    wait_for(lambda: running.service.stats.expired == 5, what="expiry")
    assert client.learned_before_marker(lambda: _learned(running)) == 0


def test_pending_joins_are_bounded(settings_factory, start_service, client_factory):
    settings = settings_factory(max_pending=20)
    running = start_service(settings)
    client = client_factory(settings)
    for i in range(50):
        client.context(f"e{i}")
    client.decisions(50)
    assert len(running.service.joins) == 20
    assert running.service.stats.evicted == 30
    wait_for(lambda: _learned(running) == 30, what="evicted decisions learned with the default")


def test_a_full_producer_queue_is_backpressure_not_loss(
    settings_factory, start_service, client_factory
):
    # A local queue of 3 messages: the loop must poll and wait, never drop or crash.
    settings = settings_factory(kafka_extra={"queue.buffering.max.messages": 3})
    running = start_service(settings)
    client = client_factory(settings)
    for i in range(300):
        client.context(f"bp{i}", domain=f"d{i % 4}")
    decisions = client.decisions(300)
    assert sorted(d["event_id"] for d in decisions) == sorted(f"bp{i}" for i in range(300))
    assert running.service.stats.delivery_retries == 0
    assert running.thread.is_alive()


def test_malformed_messages_are_skipped_and_valid_ones_decided(
    settings_factory, start_service, client_factory
):
    settings = settings_factory(max_domains=2, max_actions=4)
    running = start_service(settings)
    client = client_factory(settings)
    t = settings.topic_contexts
    bad = [
        (b"\xff\xfe not utf8", b"d1"),
        (b"{not json", b"d1"),
        (b"[1, 2, 3]", b"d1"),
        (orjson.dumps({"domain": "d1", "context": {}, "candidates": ["a"]}), b"d1"),
        (
            orjson.dumps(
                {"event_id": "x", "domain": "bad domain!", "context": {}, "candidates": ["a"]}
            ),
            None,
        ),
        (
            orjson.dumps(
                {"event_id": "x", "domain": "d1", "context": {"a": [1]}, "candidates": ["a"]}
            ),
            b"d1",
        ),
        (orjson.dumps({"event_id": "x", "domain": "d1", "context": {}, "candidates": []}), b"d1"),
        (
            orjson.dumps(
                {"event_id": "x", "domain": "d1", "context": {}, "candidates": ["a", "a"]}
            ),
            b"d1",
        ),
        (b'{"event_id": "x", "domain": "d1", "context": {"v": 1e999}, "candidates": ["a"]}', b"d1"),
        (None, b"d1"),
    ]
    for i in range(30):
        client.context(f"ok{i}", domain=f"d{1 + i % 2}")
        if i < len(bad):
            client.send_raw(t, *bad[i])
    client.context("third-domain", domain="d3")  # over RL_MAX_DOMAINS=2
    client.context("ok0", domain="d1")  # still pending: a duplicate event id
    client.context("many-actions", domain="d1", candidates=["a", "b", "p", "q"])  # 5 > 4 actions
    client.reward("ok1", 7.0, domain="d2")  # out of range
    client.send_raw(settings.topic_rewards, b"garbage", b"d1")
    decisions = client.decisions(30)
    assert sorted(d["event_id"] for d in decisions) == sorted(f"ok{i}" for i in range(30))
    metrics = running.service.metrics
    wait_for(lambda: metrics.rejected_total == len(bad) + 5, what="all rejections counted")
    by_code = metrics.rejected_by_code()
    for code in ("action_limit", "domain_limit", "duplicate_event", "reward_out_of_range"):
        assert by_code[code] == 1, code
    assert by_code["invalid_utf8"] == 1
    assert running.thread.is_alive()


def test_offsets_committed_only_for_processed_messages(
    settings_factory, start_service, client_factory
):
    settings = settings_factory()
    running = start_service(settings)
    client = client_factory(settings)
    for i in range(30):
        client.context(f"e{i}")
    client.decisions(30)
    running.stop()
    # A second instance of the same group must not decide the old contexts again.
    running2 = start_service(settings)
    client.context("new")
    decisions = client.decisions(1)  # the reader continues after the first 30
    assert [d["event_id"] for d in decisions] == ["new"]
    time.sleep(1.0)
    assert running2.service.stats.decisions == 1


def test_a_reward_before_its_context_is_held_and_joined(
    settings_factory, start_service, client_factory
):
    settings = settings_factory(reward_early_wait_s=30.0)
    running = start_service(settings)
    client = client_factory(settings)
    client.reward("early", 1.0)
    client.flush()
    stats = running.service.stats
    wait_for(lambda: stats.early_rewards == 1, what="the early reward held")
    client.context("early")
    client.decisions(1)
    wait_for(lambda: stats.rewards_joined == 1, what="the held reward joined")
    wait_for(lambda: running.service.domains.states["d1"].baseline.n_learned == 1, what="learned")
    assert stats.unknown_rewards == 0
