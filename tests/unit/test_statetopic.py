"""State-topic records: exact round trip, corruption detection, and the restore plan."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING

from policies.base import Feedback, Policy
from policies.registry import create_policy
from stream.config import load_settings
from stream.core.domain import DomainInfo
from stream.core.early import EarlyReward
from stream.core.finished import Finished
from stream.state.delta import MAX_DELTAS, Chain, apply_parts, changes, delta_key, digest_domain
from stream.state.publisher import PartitionMark, StatePublisher
from stream.state.records import Snapshot, SnapshotMeta
from stream.state.store import CorruptCheckpoint
from stream.state.topic import (
    DomainShare,
    Marker,
    decode_domain,
    decode_marker,
    encode_domain,
    encode_marker,
    marker_key,
)
from stream.state.topicreader import StateRecords
from tests.builders import context_batch, pending, trained

TOPICS = ("ctx", "rew")


def snap() -> Snapshot:
    domains = {f"d{i}": {"served": trained("doubly_robust", i).state_dict()} for i in range(3)}
    meta = SnapshotMeta(
        4,
        0,
        {f"d{i}": DomainInfo(partition=i % 2, decisions=7) for i in range(3)},
        [EarlyReward("d1", "late-ctx", 1.0, 99.0, 1), EarlyReward("d2", "x", 0.0, 99.0, 0)],
    )
    return Snapshot(domains, meta=meta)


def fin(domain: str) -> Finished:
    return Finished(domain, "e", True, 5.0)


def record(s: Snapshot, domain: str, part: int, offsets: tuple[int, int]) -> bytes:
    early = [e for e in s.meta.early if e.domain == domain]
    return encode_domain(
        s, domain, part, offsets, of=DomainShare([pending(domain, "p")], early=early)
    )


def test_domain_record_round_trips_exactly():
    s = snap()
    rec = decode_domain(record(s, "d1", 1, (40, 12)), TOPICS)
    assert (rec.domain, rec.partition, rec.offsets) == ("d1", 1, (40, 12))
    got = rec.snapshot
    assert got.offsets == {("ctx", 1): 40, ("rew", 1): 12}
    assert got.pending == [pending("d1", "p")]
    assert got.meta.early == [EarlyReward("d1", "late-ctx", 1.0, 99.0, 1)]  # its own only
    assert got.meta.domains == {"d1": DomainInfo(partition=1, decisions=7)}
    meta, arrays = got.domains["d1"]["served"]
    meta0, arrays0 = s.domains["d1"]["served"]
    assert meta == meta0
    assert arrays.keys() == arrays0.keys()
    for k in arrays0:
        assert arrays[k].dtype == arrays0[k].dtype and np.array_equal(arrays[k], arrays0[k])


@pytest.mark.parametrize("where", [5, 60, -1])
def test_a_flipped_byte_is_detected(where):
    raw = bytearray(record(snap(), "d0", 0, (1, 1)))
    raw[where] ^= 0x40
    with pytest.raises(CorruptCheckpoint):
        decode_domain(bytes(raw), TOPICS)


def test_a_truncated_record_is_detected():
    raw = record(snap(), "d0", 0, (1, 1))
    with pytest.raises(CorruptCheckpoint):
        decode_domain(raw[:-9], TOPICS)


def test_marker_round_trip_and_garbage():
    assert decode_marker(encode_marker(3, (10, 4), 7, 55, {"d": ("b1", 2)})) == Marker(
        3, (10, 4), 7, 55, {"d": ("b1", 2)}
    )
    for bad in (b"", b"{}", b"[1]", b'{"schema": 1, "kind": "partition", "partition": 1}'):
        with pytest.raises(CorruptCheckpoint):
            decode_marker(bad)


def test_plan_counts_each_domain_from_the_newer_of_its_record_and_the_marker():
    s = snap()
    values = {
        "d0": record(s, "d0", 0, (10, 5)),  # unchanged since: valid up to the marker
        "d2": record(s, "d2", 0, (30, 8)),  # newer than the marker (its publish was cut)
        "d1": record(s, "d1", 1, (99, 99)),  # another partition
        marker_key(0): encode_marker(0, (20, 7), heads={"d0": ("", 0)}),
        "d9": b"garbage",  # reported and ignored
    }
    plan = StateRecords(values, TOPICS).plan(0)
    assert plan is not None
    assert sorted(r.domain for r in plan.records) == ["d0", "d2"]
    assert plan.valid_from == {"d0": (20, 7), "d2": (30, 8)}
    assert plan.start == (20, 7)
    assert plan.newest == (30, 8)
    assert StateRecords(values, TOPICS).plan(5) is None


def test_without_a_marker_the_partition_is_read_from_its_beginning():
    s = snap()
    plan = StateRecords({"d0": record(s, "d0", 0, (10, 5))}, TOPICS).plan(0)
    assert plan is not None
    assert plan.start == (OFFSET_BEGINNING, OFFSET_BEGINNING)
    assert plan.valid_from == {"d0": (10, 5)}  # its own messages before 10 / 5 are skipped


# -- deltas: a checkpoint publishes the rows that changed ---------------------------------
def ranker(seed: int = 0) -> Policy:
    """linucb on 64 features that has learned 20 actions: one 32 KB inverse per action."""
    p = create_policy("linucb", 64, seed=seed)
    learn(p, [f"a{i}" for i in range(20)], seed)
    return p


def learn(p: Policy, actions: list[str], seed: int) -> None:
    """One reward for each of ``actions`` (and only them)."""
    rng = np.random.default_rng(seed)
    k = len(actions)
    b = context_batch(
        rows=rng.random((k * k, 64)), candidates=actions, keys=[str(i) for i in range(k)]
    )
    rows = np.arange(k) * k + np.arange(k)
    p.learn(Feedback(b, rows, rng.random(k), np.full(k, 1.0 / k)))


def one(p: Policy) -> Snapshot:
    meta = SnapshotMeta(64, 0, {"d": DomainInfo(partition=0)})
    pmeta, arrays = p.state_dict()
    copied = {k: a.copy() for k, a in arrays.items()}  # a checkpoint's arrays stay still
    return Snapshot({"d": {"served": (pmeta, copied)}}, meta=meta)


def same_state(rec: Any, s: Snapshot) -> None:
    meta, arrays = rec.snapshot.domains["d"]["served"]
    meta0, arrays0 = s.domains["d"]["served"]
    assert meta == meta0 and arrays.keys() == arrays0.keys()
    for k in arrays0:
        assert arrays[k].dtype == arrays0[k].dtype and np.array_equal(arrays[k], arrays0[k]), k


def chain_after(p: Policy, base: str) -> Chain:
    roles = one(p).domains["d"]
    now = digest_domain(roles)
    return Chain(base, 0, sum(d.nbytes for d in now.values()), 0, now)


def test_a_delta_carries_the_changed_rows_and_restores_exactly():
    p = ranker()
    base = encode_domain(one(p), "d", 0, (10, 4), "b1")
    chain = chain_after(p, "b1")
    learn(p, ["a3", "a17"], seed=1)  # two of twenty actions learn
    s1 = one(p)
    got = changes(chain, digest_domain(s1.domains["d"]))
    assert got is not None
    parts, size = got
    assert parts[("served", "A_inv")] == [3, 17]  # one chunk per 32 KB inverse
    d1 = encode_domain(s1, "d", 0, (20, 9), "b1", 1, parts, of=DomainShare([pending("d", "p")]))
    assert len(d1) < len(base) / 8
    values = {
        "d": base,
        delta_key("d", "b1", 1): d1,
        marker_key(0): encode_marker(0, (20, 9), heads={"d": ("b1", 1)}),
    }
    plan = StateRecords(values, TOPICS).plan(0)
    assert plan is not None and len(plan.records) == 1
    rec = plan.records[0]
    same_state(rec, s1)
    assert (rec.offsets, rec.seq) == ((20, 9), 1)
    assert rec.snapshot.pending == [pending("d", "p")]

    # A new action grows every array: its rows go with the next link.
    chain2 = Chain("b1", 1, chain.base_bytes, size, digest_domain(s1.domains["d"]))
    learn(p, ["a5", "new"], seed=2)
    s2 = one(p)
    got2 = changes(chain2, digest_domain(s2.domains["d"]))
    assert got2 is not None
    values[delta_key("d", "b1", 2)] = encode_domain(s2, "d", 0, (30, 9), "b1", 2, got2[0])
    rec2 = StateRecords(values, TOPICS).plan(0).records[0]  # type: ignore[union-attr]
    same_state(rec2, s2)
    assert rec2.offsets == (30, 9)


def test_a_chain_stops_at_a_stale_missing_or_damaged_link():
    p = ranker()
    s0 = one(p)
    chain = chain_after(p, "b1")
    learn(p, ["a1"], seed=1)
    s1 = one(p)
    parts = changes(chain, digest_domain(s1.domains["d"]))[0]  # type: ignore[index]
    base = encode_domain(s0, "d", 0, (10, 4), "b1")

    def restored(links: dict[str, bytes]) -> Any:
        plan = StateRecords({"d": base, **links}, TOPICS).plan(0)
        assert plan is not None
        return plan.records[0]

    stale = encode_domain(s1, "d", 0, (20, 5), "b0", 1, parts)  # an older chain's link
    same_state(restored({delta_key("d", "b1", 1): stale}), s0)
    second = encode_domain(s1, "d", 0, (20, 5), "b1", 2, parts)  # link 1 is missing
    same_state(restored({delta_key("d", "b1", 2): second}), s0)
    good = encode_domain(s1, "d", 0, (20, 5), "b1", 1, parts)
    bad = bytearray(good)
    bad[-3] ^= 1
    same_state(restored({delta_key("d", "b1", 1): bytes(bad)}), s0)
    rec = restored({delta_key("d", "b1", 1): good})
    same_state(rec, s1)
    assert rec.offsets == (20, 5)


def test_a_delta_must_carry_the_rows_its_base_lacks():
    old = np.zeros((2, 4))
    with pytest.raises(CorruptCheckpoint):
        apply_parts(old, [3, 4], 1, [0], np.ones((1, 4)), "x")  # row 2 is new: not sent
    out = apply_parts(old, [3, 4], 1, [2], np.ones((1, 4)), "x")
    assert np.array_equal(out, [[0] * 4, [0] * 4, [1] * 4])


def test_a_new_base_when_a_delta_would_not_save_half_or_the_chain_is_long():
    p = ranker()
    chain = chain_after(p, "b1")
    learn(p, [f"a{i}" for i in range(20)], seed=1)  # every action changed
    s = one(p)
    now = digest_domain(s.domains["d"])
    assert changes(chain, now) is None
    p2 = ranker()
    full = chain_after(p2, "b1")
    learn(p2, ["a1"], seed=1)
    s2 = one(p2)
    now2 = digest_domain(s2.domains["d"])
    assert changes(full, now2) is not None
    long = Chain("b1", MAX_DELTAS, full.base_bytes, 0, full.digests)
    assert changes(long, now2) is None
    heavy = Chain("b1", 3, full.base_bytes, full.base_bytes, full.digests)  # deltas outweigh it
    assert changes(heavy, now2) is None


def test_the_publisher_extends_its_chain_and_retires_it_with_a_new_base(monkeypatch):
    publisher = StatePublisher(load_settings())
    sent: list[list[tuple[str, bytes | None]]] = []
    monkeypatch.setattr(publisher, "_send", lambda items, *rest: sent.append(list(items)))
    topic: dict[str, bytes] = {}

    def publish(s: Snapshot, offsets: tuple[int, int], chains: dict[str, Chain]) -> Any:
        sent.clear()
        heads = {d: (c.base, c.seq) for d, c in chains.items()}
        mark = PartitionMark(offsets, 1, 0, heads)
        made = publisher.publish(s, {"d": (0, offsets)}, {0: mark}, 1.0, chains)
        for key, value in sent[0] + sent[1]:
            if value is None:
                topic.pop(key, None)
            else:
                topic[key] = value
        return made, [k for k, _ in sent[0]], [k for k, v in sent[1] if v is None]

    p = ranker()
    made, keys, tombs = publish(one(p), (10, 1), {})
    assert keys == ["d"] and made["d"].seq == 0 and tombs == []
    first = made["d"].base
    for k in range(1, 4):
        learn(p, [f"a{k}"], seed=k)
        made, keys, tombs = publish(one(p), (10 + k, 1), made)
        assert keys == [delta_key("d", first, k)] and tombs == [] and made["d"].seq == k
        same_state(StateRecords(topic, TOPICS).plan(0).records[0], one(p))  # type: ignore[union-attr]
    learn(p, [f"a{i}" for i in range(20)], seed=9)
    made, keys, tombs = publish(one(p), (20, 1), made)
    assert keys == ["d"] and made["d"].seq == 0
    assert tombs == [delta_key("d", first, k) for k in (1, 2, 3)]
    assert sorted(topic) == sorted(["d", marker_key(0)])
    plan = StateRecords(topic, TOPICS).plan(0)
    assert plan is not None and plan.complete and plan.valid_from == {"d": (20, 1)}
    same_state(plan.records[0], one(p))
    assert decode_marker(topic[marker_key(0)]).heads == {"d": (made["d"].base, 0)}


# -- exactness: a restore never reads past what its state holds ---------------------------
def test_a_marker_vouches_only_for_the_heads_it_lists():
    p = ranker()
    s0 = one(p)
    chain = chain_after(p, "b1")
    learn(p, ["a1"], seed=1)
    parts = changes(chain, digest_domain(one(p).domains["d"]))[0]  # type: ignore[index]
    base = encode_domain(s0, "d", 0, (10, 4), "b1")
    link = encode_domain(one(p), "d", 0, (15, 6), "b1", 1, parts)
    marker = encode_marker(0, (20, 9), heads={"d": ("b1", 2)})  # link 2 never arrived
    for links in ({}, {delta_key("d", "b1", 1): link}):
        plan = StateRecords({"d": base, **links, marker_key(0): marker}, TOPICS).plan(0)
        assert plan is not None and not plan.complete
        rec = plan.records[0]
        assert plan.valid_from == {"d": rec.offsets}  # its own point, not the marker's
        assert plan.start == rec.offsets  # read on from exactly there


def test_a_domain_the_marker_lists_without_a_record_is_read_from_the_beginning():
    s = snap()
    values = {
        "d0": record(s, "d0", 0, (10, 5)),
        marker_key(0): encode_marker(0, (20, 7), 3, 40, {"d0": ("", 0), "d2": ("x", 0)}),
    }
    plan = StateRecords(values, TOPICS).plan(0)
    assert plan is not None and not plan.complete
    assert plan.start == (OFFSET_BEGINNING, OFFSET_BEGINNING)
    assert plan.mark == OFFSET_BEGINNING  # every decision of the partition may be replayed
    assert plan.valid_from == {"d0": (20, 7)}


def test_an_older_owners_late_write_never_replaces_a_newer_ones():
    records = StateRecords({}, TOPICS)
    records.read("d", b"new", 5)
    records.read("d", b"zombie", 4)  # written later, by a deposed owner
    records.read("d#b#1", b"link", 4)
    records.read("d#b#1", None, 3)  # its late tombstone
    assert records.values == {"d": b"new", "d#b#1": b"link"}
    records.read("d", None, 6)
    assert "d" not in records.values


def test_a_records_epoch_and_mark_travel_with_it():
    rec = decode_domain(
        encode_domain(
            snap(), "d0", 0, (1, 2), epoch=9, mark=33, of=DomainShare(finished=[fin("d0")])
        ),
        TOPICS,
    )
    assert (rec.epoch, rec.mark) == (9, 33)
    assert rec.snapshot.meta.finished == [fin("d0")]


def test_a_publish_that_times_out_leaves_nothing_queued_to_land_later():
    """Records still queued when a publish gives up could land after another owner has
    restored the partition: they are withdrawn."""
    from stream.state.publisher import PublishFailed

    publisher = StatePublisher(
        load_settings(kafka_bootstrap_servers="127.0.0.1:1", kafka_extra={"log_level": 0})
    )
    s = snap()
    mark = PartitionMark((5, 5), 1, 0, {})
    with pytest.raises(PublishFailed):
        publisher.publish(s, {"d0": (0, (5, 5))}, {0: mark}, 0.5)
    assert len(publisher._producer) == 0


def test_a_marker_with_a_flipped_digit_is_refused_not_read_as_another():
    raw = encode_marker(0, (10, 3), 1, 5, {"d": ("b1", 0)})
    bad = bytearray(raw)
    bad[raw.index(b"[10,") + 1] ^= 0x08  # 10 -> 90: it would vouch past the state
    with pytest.raises(CorruptCheckpoint):
        decode_marker(bytes(bad))


def test_a_quiet_vouched_domain_does_not_pull_the_decisions_mark_back():
    """Decisions of replayed contexts start at the marker's mark for a domain it vouches
    for, whatever mark its own (old) record carries; an unvouched record's own counts."""
    s = snap()
    old = encode_domain(s, "d0", 0, (10, 5), mark=100)
    new = encode_domain(s, "d2", 0, (30, 8), mark=900)
    marker = encode_marker(0, (20, 7), 1, 700, {"d0": ("", 0)})
    plan = StateRecords({"d0": old, "d2": new, marker_key(0): marker}, TOPICS).plan(0)
    assert plan is not None and plan.start == (20, 7) and plan.mark == 700
