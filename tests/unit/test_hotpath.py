"""`bench hotpath`: the real processor in process, every context decided, stages reported."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import orjson
import pytest

from stream.bench import hotpath
from stream.config import load_settings
from stream.core.events import Decision

# Each stage is rounded to 0.01 µs in a row: "other" is the total minus the stages' sum
# up to that rounding, once per stage and once for the total.
ROUNDING = 0.005 * (len(hotpath.STAGES) + 2)


def test_the_sink_acknowledges_each_record_at_the_next_poll():
    sink, acked = hotpath.SinkProducer(), []
    sink.produce("t", b"v", b"k", on_delivery=lambda err, msg: acked.append((err, msg.value())))
    assert acked == [] and len(sink) == 1
    assert sink.poll(0) == 1 and acked == [(None, b"v")] and len(sink) == 0


def test_traffic_holds_each_batch_of_contexts_and_the_rewards_of_the_one_before():
    s = load_settings()
    batches = hotpath.traffic(s, domains=3, batch=20, batches=4, seed=0)
    contexts = [sum(m.topic() == s.topic_contexts for m in b) for b in batches]
    rewards = [sum(m.topic() == s.topic_rewards for m in b) for b in batches]
    assert contexts == [20, 20, 20, 20]
    assert rewards[0] == 0 and all(r > 0 for r in rewards[1:])
    offsets = [(m.topic(), m.partition(), m.offset()) for b in batches for m in b]
    assert len(set(offsets)) == len(offsets)  # as a broker numbers them


class _RecordingSink(hotpath.SinkProducer):
    """The bench's sink, keeping what the processor produced."""

    made: list[_RecordingSink] = []

    def __init__(self, only_errors: bool = False) -> None:
        super().__init__(only_errors)
        self.records: list[tuple[str, bytes, bytes | None]] = []
        _RecordingSink.made.append(self)

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.records.append((topic, value, key))
        super().produce(topic, value, key, **kw)


def test_every_context_pushed_is_decided_once_with_a_valid_decision(tmp_path, monkeypatch):
    """What processor_us counts as decided are the decisions the processor produced: one
    per context pushed (warm-up batches included), each a valid draw from its own pmf."""
    monkeypatch.setattr(_RecordingSink, "made", [])
    monkeypatch.setattr(hotpath, "SinkProducer", _RecordingSink)
    s = load_settings(state_dir=tmp_path)
    batches = hotpath.traffic(s, domains=3, batch=20, batches=5, seed=0)
    pushed = {}
    for b in batches:
        for m in b:
            if m.topic() == s.topic_contexts:
                ctx = orjson.loads(m.value())
                pushed[ctx["event_id"]] = ctx
    assert len(pushed) == 100

    us, decided = hotpath.processor_us(s, batches, warm=2)
    assert math.isfinite(us) and us > 0
    (sink,) = _RecordingSink.made
    assert decided == sink.produced == len(sink.records) == len(pushed)
    assert {topic for topic, _, _ in sink.records} == {s.topic_decisions}
    decisions = [msgspec.json.decode(v, type=Decision) for _, v, _ in sink.records]
    assert sorted(d.event_id for d in decisions) == sorted(pushed)  # each once
    for d, (_, _, key) in zip(decisions, sink.records, strict=True):
        ctx = pushed[d.event_id]
        assert d.domain == ctx["domain"] and key == d.domain.encode()
        assert set(d.probabilities) == set(ctx["candidates"])
        assert d.action in ctx["candidates"]
        assert all(0.0 <= p <= 1.0 for p in d.probabilities.values())
        assert sum(d.probabilities.values()) == pytest.approx(1.0)
        assert 0.0 < d.probability == pytest.approx(d.probabilities[d.action])


def test_a_run_that_decides_fewer_contexts_than_it_pushed_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(hotpath, "processor_us", lambda s, msgs, warm: (1.0, 40 * 6 - 1))
    with pytest.raises(RuntimeError, match="239 decisions for 240 contexts"):
        hotpath.run(load_settings(), [1], batch=40, batches=6, out=tmp_path)


def test_rows_report_every_stage_and_the_json_holds_them(tmp_path):
    rows = hotpath.run(load_settings(), [1, 5], batch=40, batches=6, out=tmp_path)
    assert [r["domains"] for r in rows] == [1, 5]
    for r in rows:
        assert set(r) == {"domains", "batch", "us_per_context", "stages"}
        assert r["batch"] == 40
        assert list(r["stages"]) == [*hotpath.STAGES, "other"]  # in the table's order
        total, stages = r["us_per_context"], r["stages"]
        assert math.isfinite(total) and total > 0
        named = [stages[k] for k in hotpath.STAGES]
        # Every stage does work on this traffic: contexts decoded, featurised, chosen and
        # encoded, rewards joined and learned (a stage timing nothing reports 0.0).
        assert all(math.isfinite(v) and v > 0 for v in named), stages
        # "other" is the processor's total minus the stages' sum (never below 0): the row
        # adds up to the total, or to the stages' sum where they took longer apart.
        assert stages["other"] >= 0
        assert stages["other"] == pytest.approx(max(0.0, total - sum(named)), abs=ROUNDING)
        assert sum(stages.values()) == pytest.approx(max(total, sum(named)), abs=ROUNDING)
    data = orjson.loads((tmp_path / "hotpath.json").read_bytes())
    assert data["rows"] == rows and data["batches"] == 6 and data["machine"]
    md = (tmp_path / "hotpath.md").read_text()
    for r in rows:
        cells = [r["domains"], r["batch"], r["us_per_context"], *r["stages"].values()]
        assert "| " + " | ".join(str(c) for c in cells) + " |" in md
