"""The dead-letter topic: every rejected message, unchanged, with its reason; fuzzing a
running loop with hostile messages between valid ones."""

from __future__ import annotations

import json
import time

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def read_dead_letters(s, n: int, timeout: float = 30.0) -> list[dict]:
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap_servers,
            "group.id": "dlq",
            "enable.auto.commit": False,
        }
    )
    md = c.list_topics(s.topic_dead_letter, timeout=10).topics[s.topic_dead_letter]
    c.assign([TopicPartition(s.topic_dead_letter, p, 0) for p in md.partitions])
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for m in c.consume(500, 0.3):
            if m.error() is None:
                out.append(
                    {"value": m.value(), "key": m.key(), **{k: v.decode() for k, v in m.headers()}}
                )
    c.close()
    return out


def test_every_rejected_message_is_dead_lettered_unchanged_with_its_reason(
    settings_factory, start_service, client_factory
):
    settings = settings_factory(
        max_domains=2,
        max_actions=4,
        reward_wait_s=5.0,
        reward_early_wait_s=0.5,
        default_reward=None,
        max_message_bytes=10_000,
    )
    running = start_service(settings)
    client = client_factory(settings)
    ctx, rew = settings.topic_contexts, settings.topic_rewards
    bad_contexts = {
        "invalid_utf8": (b"\xff\xfe not utf8", b"d1"),
        "invalid_json": (b"{not json", b"d1"),
        "wrong_type": (b"[1, 2, 3]", b"d1"),
        "missing_field": (
            orjson.dumps({"domain": "d1", "context": {}, "candidates": ["a"]}),
            b"d1",
        ),
        "bad_domain": (
            orjson.dumps(
                {"event_id": "x", "domain": "bad domain!", "context": {}, "candidates": ["a"]}
            ),
            None,
        ),
        "bad_candidates": (
            orjson.dumps(
                {"event_id": "x", "domain": "d1", "context": {}, "candidates": ["a", "a"]}
            ),
            b"d1",
        ),
        "oversized": (b"{" + b" " * settings.max_message_bytes + b"}", b"d1"),
    }
    for value, key in bad_contexts.values():
        client.send_raw(ctx, value, key)
    client.context("ok1", domain="d1")
    client.context("ok2", domain="d2")
    client.context("third", domain="d3")  # domain_limit
    client.context("ok1", domain="d1")  # duplicate_event (still pending)
    client.context("wide", domain="d1", candidates=["a", "b", "p", "q"])  # action_limit
    client.decisions(2)
    client.reward("ok1", 1.0, domain="d1")
    client.reward("ok1", 1.0, domain="d1")  # duplicate_reward
    client.reward("ok2", 9.0, domain="d2")  # reward_out_of_range
    client.reward("ghost", 1.0, domain="d1")  # unknown_event, once its early wait is over
    client.flush()
    time.sleep(5.5)  # ok2 window closes
    client.reward("ok2", 0.5, domain="d2")  # expired_event
    client.flush()
    expected = {
        **{code: 1 for code in bad_contexts},
        "domain_limit": 1,
        "duplicate_event": 1,
        "action_limit": 1,
        "duplicate_reward": 1,
        "reward_out_of_range": 1,
        "unknown_event": 1,
        "expired_event": 1,
    }
    letters = read_dead_letters(settings, sum(expected.values()))
    by_code: dict[str, list[dict]] = {}
    for d in letters:
        by_code.setdefault(d["error_code"], []).append(d)
    assert {c: len(v) for c, v in by_code.items()} == expected
    for code, (value, key) in bad_contexts.items():
        (d,) = by_code[code]
        assert d["value"] == value and d["key"] == key  # unchanged
        assert d["source_topic"] == ctx and d["error_reason"]
        assert int(d["source_offset"]) >= 0 and int(d["source_timestamp"]) > 0
    ghost = by_code["unknown_event"][0]
    assert orjson.loads(ghost["value"])["event_id"] == "ghost" and ghost["source_topic"] == rew
    assert running.service.metrics.rejected_total == sum(expected.values())
    assert running.thread.is_alive()


hostile = (
    st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=30),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=15,
    ).map(lambda v: json.dumps(v).encode())  # stdlib: NaN, Infinity, ints past 64 bits
    | st.builds(
        lambda c, k: orjson.dumps({"event_id": "h", "domain": "d1", "context": c, "candidates": k}),
        st.dictionaries(
            st.text(max_size=5),
            st.lists(st.integers(-1000, 1000), max_size=2),
            min_size=1,
            max_size=2,
        ),
        st.lists(st.text(max_size=3), max_size=3),
    )
    | st.text(
        alphabet=st.characters(min_codepoint=0x1F000, max_codepoint=0x10FFFF), max_size=50
    ).map(str.encode)
)


def test_fuzzing_a_running_loop(settings_factory, start_service, client_factory):
    settings = settings_factory()
    running = start_service(settings)
    client = client_factory(settings)
    svc = running.service
    sent = {"valid": 0, "garbage": 0}

    @hsettings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(hostile, min_size=10, max_size=40))
    def batch(messages):
        for i, raw in enumerate(messages):
            client.context(f"v{sent['valid']}", domain="d1")
            sent["valid"] += 1
            client.send_raw(
                settings.topic_contexts if i % 2 else settings.topic_rewards, raw, b"d1"
            )
            sent["garbage"] += 1
        client.flush()

    batch()
    wait_for(lambda: svc.stats.decisions == sent["valid"], what="every valid context decided")
    # Garbage on the rewards topic that happens to be a well-formed reward for an unknown
    # event waits RL_REWARD_EARLY_WAIT_S before it is dead-lettered: count it as early.
    wait_for(
        lambda: svc.metrics.rejected_total + svc.stats.early_rewards >= sent["garbage"],
        what="every hostile message rejected",
    )
    assert svc.metrics.rejected_total + svc.stats.early_rewards == sent["garbage"]
    assert running.thread.is_alive()


def test_a_decision_too_large_to_deliver_dead_letters_its_context_and_the_loop_goes_on(
    settings_factory, start_service, client_factory
):
    """The producer refuses records over message.max.bytes (here 20 kB): the decision of a
    context with 64 long candidate names cannot be delivered, ever. Neither a hang nor a
    retry loop: the context is dead-lettered (cut to fit, with its original size) and
    the next context is decided."""
    settings = settings_factory(kafka_extra={"message.max.bytes": 20_000})
    running = start_service(settings)
    client = client_factory(settings)
    huge = [f"candidate-{i:02d}-" + "x" * 400 for i in range(64)]
    client.context("big", candidates=huge)
    client.context("small")
    decided = client.decisions(1)
    assert [d["event_id"] for d in decided] == ["small"]
    (dead,) = read_dead_letters(settings, 1)
    assert dead["error_code"] == "undeliverable"
    assert "big" in dead["error_reason"] and "too large" in dead["error_reason"].lower()
    assert dead["value_truncated"] == "true" and int(dead["original_size"]) > 20_000
    assert len(dead["value"]) < 20_000 and dead["source_topic"] == settings.topic_contexts
    svc = running.service
    assert ("d1", "big") not in svc.joins and svc.metrics.rejected_by_code()["undeliverable"] == 1
    assert running.thread.is_alive()


def test_oversized_messages_of_every_shape_never_stop_the_service(
    settings_factory, start_service, client_factory
):
    """A backlog of valid contexts around: a context just over the producer's 1,000,000
    bytes (under the input limit), one over the input limit (oversized), and a ~1 MB
    reward for an unknown event (dead-lettered when its early wait expires). Each goes to
    the dead-letter topic, cut to fit; every valid context is decided."""
    settings = settings_factory(reward_early_wait_s=0.5)
    client = client_factory(settings)
    # The input topics take such messages, as a user's would (Apache Kafka's default
    # is ~1 MB); the dead-letter topic keeps its default.
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for topic in (settings.topic_contexts, settings.topic_rewards):
        res = ConfigResource(
            "topic",
            topic,
            incremental_configs=[
                ConfigEntry(
                    "max.message.bytes", "4000000", incremental_operation=AlterConfigOpType.SET
                )
            ],
        )
        admin.incremental_alter_configs([res])[res].result()
    refused: list[str] = []
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "message.max.bytes": 4_000_000,
            "on_delivery": lambda err, _msg: refused.append(str(err)) if err else None,
        }
    )

    def context(eid: str, pad: int = 0) -> bytes:
        doc = {"event_id": eid, "domain": "d1", "context": {"x": 1.0}, "candidates": ["a", "b"]}
        if eid == "near-limit":
            doc["candidates"] = []  # rejected: its dead letter is over the producer's limit
        if pad:
            doc["context"]["pad"] = "p" * 1000
            doc["padding"] = "q" * pad
        return orjson.dumps(doc)

    ctx, rew = settings.topic_contexts, settings.topic_rewards
    for i in range(300):
        producer.produce(ctx, context(f"v{i}"), b"d1")
    producer.produce(ctx, context("near-limit", pad=1_000_100 - len(context("x", 1))), b"d1")
    producer.produce(ctx, context("over-limit", pad=1_100_000), b"d1")
    reward = {"event_id": "ghost", "domain": "d1", "reward": 1.0, "pad": "r" * 990_000}
    producer.produce(rew, orjson.dumps(reward), b"d1")
    for i in range(300, 600):
        producer.produce(ctx, context(f"v{i}"), b"d1")
    assert producer.flush(30) == 0 and not refused, refused
    running = start_service(settings)
    decided = {d["event_id"] for d in client.decisions(600, timeout=60)}
    assert decided == {f"v{i}" for i in range(600)}
    dead = {d["error_code"]: d for d in read_dead_letters(settings, 3, timeout=30)}
    assert set(dead) == {"bad_candidates", "oversized", "unknown_event"}, dead.keys()
    assert dead["bad_candidates"]["value_truncated"] == "true"
    for code in ("bad_candidates", "oversized"):
        assert int(dead[code]["original_size"]) > 900_000
    # A held reward keeps only what it says: its dead letter is that, re-encoded.
    assert orjson.loads(dead["unknown_event"]["value"]) == {
        "event_id": "ghost",
        "domain": "d1",
        "reward": 1.0,
    }
    assert running.thread.is_alive()


def test_an_event_id_reused_after_its_join_is_rejected(
    settings_factory, start_service, client_factory
):
    """On 56420a3 the second context was decided and a replayed first reward joined it."""
    settings = settings_factory()
    running = start_service(settings)
    client = client_factory(settings)
    client.context("e1")
    client.decisions(1)
    client.reward("e1", 1.0)
    client.flush()
    svc = running.service
    wait_for(lambda: svc.stats.rewards_joined == 1, what="the join")
    client.context("e1")  # the same id again
    client.reward("e1", 1.0)  # a replay of the first reward
    client.flush()
    dead = read_dead_letters(settings, 2)
    assert sorted(d["error_code"] for d in dead) == ["duplicate_event", "duplicate_reward"]
    assert svc.stats.rewards_joined == 1 and svc.stats.decisions == 1


def test_reward_only_domains_count_against_the_domain_limit(
    settings_factory, start_service, client_factory
):
    """On 56420a3, 300 domains that only ever sent rewards were all held (and each got a
    state-topic key) despite RL_MAX_DOMAINS=20."""
    settings = settings_factory(max_domains=20, reward_early_wait_s=3600.0)
    running = start_service(settings)
    client = client_factory(settings)
    client.context("real")
    client.decisions(1)
    for i in range(300):
        client.reward(f"ghost-event-{i}", 1.0, domain=f"ghost{i}")
    client.flush()
    dead = read_dead_letters(settings, 281)
    assert len(dead) == 281 and {d["error_code"] for d in dead} == {"domain_limit"}
    svc = running.service
    assert len(svc.domains.states) + len(svc.joins.early.domains()) == 20
