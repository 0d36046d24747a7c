"""`bench hotpath`: the real processor in process, every context decided, stages reported."""

from __future__ import annotations

import orjson

from stream.bench import hotpath
from stream.config import load_settings


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


def test_rows_report_every_stage_and_the_json_holds_them(tmp_path):
    rows = hotpath.run(load_settings(), [1, 5], batch=40, batches=6, out=tmp_path)
    assert [r["domains"] for r in rows] == [1, 5]
    for r in rows:
        assert set(r["stages"]) == {*hotpath.STAGES, "other"}
        assert r["us_per_context"] > 0 and all(v >= 0 for v in r["stages"].values())
    assert orjson.loads((tmp_path / "hotpath.json").read_bytes())["rows"] == rows
