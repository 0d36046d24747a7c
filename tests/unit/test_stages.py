"""The loop's stage timer: each lap is its stage's, turns reach the histograms and the
trace, collections are timed."""

from __future__ import annotations

import gc
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from stream.observe.stages import STAGES, Stages, read_trace


def _samples(stages: Stages) -> str:
    r = CollectorRegistry()
    r.register(stages.histograms)
    r.register(stages.gc_pauses)
    return generate_latest(r).decode()


def test_each_lap_is_the_time_since_the_previous_one(tmp_path):
    trace = tmp_path / "trace.jsonl"
    stages = Stages(str(trace))
    stages.start()
    try:
        stages.start_turn()
        time.sleep(0.02)
        stages.lap("consume")
        stages.lap("decode")
        time.sleep(0.03)
        stages.lap("decide")
        time.sleep(0.01)
        stages.lap("decode")  # a stage met twice in a turn adds up
        stages.end_turn()
        stages.start_turn()
        stages.end_turn()  # a turn without laps: no observation
    finally:
        stages.close()
    (turn, empty) = read_trace(str(trace))
    got = dict(turn["s"])
    assert [name for name, _ in turn["s"]] == ["consume", "decode", "decide"]
    assert got["consume"] == pytest.approx(20, abs=8)
    assert got["decide"] == pytest.approx(30, abs=8)
    assert got["decode"] == pytest.approx(10, abs=8)
    assert abs(turn["t"] - time.time()) < 5 and empty["s"] == []
    text = _samples(stages)
    assert 'bandit_loop_stage_seconds_count{stage="decide"} 1.0' in text
    assert 'bandit_loop_stage_seconds_bucket{le="0.05",stage="decide"} 1.0' in text
    assert 'bandit_loop_stage_seconds_bucket{le="0.025",stage="decide"} 0.0' in text
    assert 'stage="learn"' not in text  # a stage that never ran shows nothing


def test_collections_are_timed_and_marked_in_their_turn(tmp_path):
    trace = tmp_path / "trace.jsonl"
    stages = Stages(str(trace))
    stages.start()
    try:
        stages.start_turn()
        gc.collect(2)
        stages.lap("learn")
        stages.end_turn()
    finally:
        stages.close()
    assert stages._on_gc not in gc.callbacks  # closed: no callback left behind
    (turn,) = read_trace(str(trace))
    assert any(g == 2 and ms >= 0 for g, _, ms in turn["gc"])
    assert 'bandit_gc_pause_seconds_count{generation="2"}' in _samples(stages)


def test_every_stage_has_a_place_in_the_order():
    assert len(set(STAGES)) == len(STAGES)
    stages = Stages()
    with pytest.raises(KeyError):
        stages.lap("nap")


def test_the_slowest_decisions_are_charged_to_the_stages_that_covered_their_wait(tmp_path):
    """Turns at t=100 (consume 1 ms, decide 2 ms) and t=100.5 (checkpoint snapshot 40 ms,
    with a 30 ms gen-2 collection in it): a decision sent at 100.49 and decided at 100.545
    waited 10 ms for a fetch, 40 ms behind the snapshot (30 of it collecting) and 5 ms in
    the next turn's consume."""
    import numpy as np
    import orjson

    from stream.bench.tail import breakdown_table, slowest

    trace = tmp_path / "trace.jsonl"
    turns = [
        {"t": 100.0, "s": [["consume", 1.0], ["decide", 2.0]]},
        {"t": 100.5, "s": [["checkpoint_snapshot", 40.0]], "gc": [[2, 100.505, 30.0]]},
        {"t": 100.54, "s": [["consume", 5.0]]},
    ]
    trace.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in turns))
    n = 100  # the slow one in the middle (steady state); the rest take 1 ms
    sent = np.full(n, 100.0)
    decided = np.full(n, 100.0005)
    read = np.full(n, 100.001)
    sent[50], decided[50], read[50] = 100.49, 100.545, 100.546
    got = slowest(sent, decided, read, trace)
    assert got["decisions"] == 1 and got["latency_ms"] == pytest.approx(56.0, abs=0.01)
    assert got["in_loop_ms"] == pytest.approx({"checkpoint_snapshot": 40.0, "consume": 5.0})
    assert got["gc_ms"] == pytest.approx(30.0)
    assert got["waiting_for_a_fetch_ms"] == pytest.approx(10.0, abs=0.01)
    assert got["decided_to_read_ms"] == pytest.approx(1.0, abs=0.01)
    assert breakdown_table(got)[0] == ["checkpoint_snapshot", 40.0]


def test_the_state_publish_is_paced_within_its_budget():
    from stream.state.publisher import Pace

    checks = []
    pace = Pace(1e6, budget_s=0.15)  # 1 MB/s, at most 0.15 s of sleep
    t = time.monotonic()
    for _ in range(4):
        pace.wait(50_000, lambda: checks.append(1))  # 0.2 MB: 0.15 s at that rate
    assert 0.13 <= time.monotonic() - t < 0.3 and checks
    for _ in range(10):
        pace.wait(1_000_000, lambda: None)  # far ahead: the budget is spent, no more sleep
    assert pace.slept == pytest.approx(0.15, abs=0.01) and time.monotonic() - t < 0.4
    unpaced = Pace(0, budget_s=10)
    unpaced.wait(10**9, lambda: None)
    assert unpaced.slept == 0


def test_back_to_back_turns_start_where_the_previous_one_ended(tmp_path):
    trace = tmp_path / "trace.jsonl"
    stages = Stages(str(trace))
    stages.start()
    try:
        stages.start_turn()
        time.sleep(0.02)
        stages.lap("decide")
        stages.end_turn()
        time.sleep(0.01)  # no wait for a message: this is the next turn's
        stages.lap("consume")
        stages.end_turn()
    finally:
        stages.close()
    first, second = read_trace(str(trace))
    assert second["t"] - first["t"] == pytest.approx(0.02, abs=0.008)
    assert dict(second["s"])["consume"] == pytest.approx(10, abs=5)


def test_the_report_waits_for_a_checkpoint_write_but_never_longer_than_an_interval():
    from stream.observe.reporter import MetricsReporter

    r = MetricsReporter.__new__(MetricsReporter)
    r.interval_s, r.last = 10.0, time.monotonic() - 12.0
    assert r.due() and not r.due(busy=True)
    r.last = time.monotonic() - 20.5  # a stuck write never silences the metrics
    assert r.due(busy=True)
