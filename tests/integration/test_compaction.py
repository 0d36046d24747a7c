"""On Apache Kafka the state topic compacts to one record per domain (and per delta of its
current chain) and one marker per partition, and a restore from what is left gives
exactly the state before."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from stream.state.topic import marker_key
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

DOMAINS = [f"d{i}" for i in range(6)]


def _compact_fast(admin: AdminClient, topic: str) -> None:
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
        for k, v in {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.01"}.items()
    ]
    res = ConfigResource("topic", topic, incremental_configs=entries)
    admin.incremental_alter_configs([res])[res].result()


def _state_keys(bootstrap: str, topic: str, partitions: int) -> Counter[str]:
    """How many live (non-tombstone) records each key has on the topic now."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compaction-reader"})
    keys: Counter[str] = Counter()
    try:
        for p in range(partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            if high <= low:
                continue
            c.assign([TopicPartition(topic, p, low)])
            last = low - 1
            deadline = time.monotonic() + 30
            while last < high - 1 and time.monotonic() < deadline:
                for m in c.consume(500, timeout=0.5):
                    if m.error() is None:
                        last = m.offset() or 0
                        if m.value() is not None:
                            keys[(m.key() or b"").decode()] += 1
    finally:
        c.close()
    return keys


def _states(svc: Any) -> dict[str, Any]:
    """Every policy's JSON state and arrays, and the pending decisions, per domain."""
    out: dict[str, Any] = {}
    for name, st in svc.domains.states.items():
        roles = {}
        for role, pol in st.roles().items():
            meta, arrays = pol.state_dict()
            roles[role] = (orjson.dumps(meta, option=orjson.OPT_SORT_KEYS), arrays)
        out[name] = roles
    out["#pending"] = sorted((p.domain, p.event_id) for p in svc.joins.items())
    return out


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["#pending"] == after["#pending"]
    assert set(before) == set(after)
    for domain in DOMAINS:
        assert set(before[domain]) == set(after[domain]), domain
        for role, (meta, arrays) in before[domain].items():
            meta2, arrays2 = after[domain][role]
            assert meta == meta2, (domain, role)
            assert set(arrays) == set(arrays2)
            for k, a in arrays.items():
                assert np.array_equal(a, arrays2[k]), (domain, role, k)


def test_the_state_topic_compacts_and_restores(
    engine, settings_factory, start_service, client_factory
):
    if engine != "kafka":
        pytest.skip("the embedded broker has no log cleaner")
    settings = settings_factory(checkpoint_interval_s=0.2)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    _compact_fast(admin, settings.topic_state)
    topic, parts = settings.topic_state, settings.topic_partitions

    first = start_service(settings)
    client = client_factory(settings)
    n = 0
    deadline = time.monotonic() + 30
    # Rewards keep changing every domain, so each checkpoint republishes them all.
    while time.monotonic() < deadline:
        for d in DOMAINS:
            client.context(f"e{n}", domain=d)
            if n >= len(DOMAINS):
                client.reward(f"e{n - len(DOMAINS)}", float(n % 3 == 0), domain=d)
            n += 1
        client.flush()
        time.sleep(0.1)
        written = sum(
            client.consumer.get_watermark_offsets(TopicPartition(topic, p), cached=False)[1]
            for p in range(parts)
        )
        if written >= 40 * len(DOMAINS):
            break
    assert written >= 40 * len(DOMAINS), f"only {written} state records in 30 s"
    first.stop()
    before = _states(first.service)
    # A checkpoint where one or two of a domain's three actions learned sends a delta.
    written_keys = _state_keys(settings.kafka_bootstrap_servers, topic, parts)
    assert any("#" in k and not k.startswith("#") for k in written_keys), written_keys
    held = sorted({first.service.domains.states[d].partition for d in DOMAINS})

    # The cleaner never touches the active segment: one tombstone of a key no one reads
    # rolls each partition's last checkpoint into a closed segment.
    time.sleep(0.3)
    probe = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for p in range(parts):
        probe.produce(topic, None, b"#compaction-probe", partition=p)
    assert probe.flush(10) == 0

    # One live record per key: each domain's base, the deltas of its current chain
    # (<domain>#<base>#<k>; the replaced chains' are tombstoned) and each held
    # partition's marker.
    want = {d: 1 for d in DOMAINS} | {marker_key(p): 1 for p in held}
    seen: list[Counter[str]] = []

    def compacted() -> bool:
        seen.append(_state_keys(settings.kafka_bootstrap_servers, topic, parts))
        keys = seen[-1]
        links = {k: n for k, n in keys.items() if k not in want}
        bases = {k.split("#")[0]: k.split("#")[1] for k in links if k.count("#") == 2}
        return {k: keys[k] for k in want} == want and all(
            n == 1
            and k.count("#") == 2
            and k.split("#")[0] in DOMAINS
            and k.split("#")[2].isdigit()
            and bases[k.split("#")[0]] == k.split("#")[1]  # one chain per domain
            for k, n in links.items()
        )

    try:
        wait_for(compacted, timeout=90, what="compaction")
    except AssertionError:
        raise AssertionError(f"not compacted to {want} and deltas: {seen[-1]}") from None

    shutil.rmtree(settings.state_dir)
    second = start_service(settings)
    _assert_same(before, _states(second.service))
