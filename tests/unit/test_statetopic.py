"""State-topic records: exact round trip, corruption detection, and the restore plan."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING

from stream.state.store import CorruptCheckpoint, Snapshot
from stream.state.topic import (
    StateRecords,
    decode_domain,
    decode_marker,
    encode_domain,
    encode_marker,
    marker_key,
)
from tests.builders import trained

TOPICS = ("ctx", "rew")


def snap() -> Snapshot:
    domains = {f"d{i}": {"served": trained("doubly_robust", i).state_dict()} for i in range(3)}
    meta = {
        "features": {"n_features": 4, "seed": 0},
        "domains": {f"d{i}": {"partition": i % 2, "decisions": 7} for i in range(3)},
        "early_rewards": [["d1", "late-ctx", 1.0, 99.0, 1], ["d2", "x", 0.0, 99.0, 0]],
    }
    return Snapshot(domains, [], {}, meta)


def record(s: Snapshot, domain: str, part: int, offsets: tuple[int, int]) -> bytes:
    return encode_domain(s, domain, part, offsets, [{"domain": domain, "event_id": "p"}])


def test_domain_record_round_trips_exactly():
    s = snap()
    rec = decode_domain(record(s, "d1", 1, (40, 12)), TOPICS)
    assert (rec.domain, rec.partition, rec.offsets) == ("d1", 1, (40, 12))
    got = rec.snapshot
    assert got.offsets == {("ctx", 1): 40, ("rew", 1): 12}
    assert got.pending == [{"domain": "d1", "event_id": "p"}]
    assert got.meta["early_rewards"] == [["d1", "late-ctx", 1.0, 99.0, 1]]  # its own only
    assert got.meta["domains"] == {"d1": {"partition": 1, "decisions": 7}}
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
    assert decode_marker(encode_marker(3, (10, 4))) == (3, (10, 4))
    for bad in (b"", b"{}", b"[1]", b'{"schema": 1, "kind": "partition", "partition": 1}'):
        with pytest.raises(CorruptCheckpoint):
            decode_marker(bad)


def test_plan_counts_each_domain_from_the_newer_of_its_record_and_the_marker():
    s = snap()
    values = {
        "d0": record(s, "d0", 0, (10, 5)),  # unchanged since: valid up to the marker
        "d2": record(s, "d2", 0, (30, 8)),  # newer than the marker (its publish was cut)
        "d1": record(s, "d1", 1, (99, 99)),  # another partition
        marker_key(0): encode_marker(0, (20, 7)),
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
