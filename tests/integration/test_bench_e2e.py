"""The end-to-end benchmarks run (small) and write what they promise."""

from __future__ import annotations

import math

import orjson
import pytest

from stream.bench import e2e
from stream.observe.stages import STAGES

pytestmark = pytest.mark.integration


@pytest.fixture
def on_test_broker(bootstrap, monkeypatch):
    monkeypatch.setenv("RL_KAFKA_BOOTSTRAP_SERVERS", bootstrap)


def test_throughput_latency_and_memory_reports(on_test_broker, engine, tmp_path):
    tp = e2e.throughput(6000, 20, tmp_path, reward_delay=200, engine=engine)
    assert tp["decided"] == 6000 and tp["service_exit_code"] == 0
    assert tp["contexts_per_s"] > 0 and tp["passthrough_per_s"] > 0 and tp["ratio"] > 0
    lat = e2e.latency(3000, 20, 1000.0, tmp_path, engine=engine)
    assert lat["decided"] == 3000
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["p999_ms"]
    floor = [lat[f"passthrough_{k}"] for k in ("p50_ms", "p95_ms", "p99_ms", "p999_ms")]
    assert 0 < floor[0] <= floor[1] <= floor[2] <= floor[3]
    mem = e2e.memory(4000, 50, 2000.0, tmp_path, engine=engine)
    assert mem["rss_mb"] and 50 < mem["rss_max_mb"] < 2000
    assert 0 < mem["decided_per_s"] <= 2000.0 * 1.5  # paced at 2,000/s
    state = mem["state_topic"]  # at least the shutdown's checkpoint, 50 domains in it
    assert (
        state["checkpoints"] >= 1 and state["records_per_checkpoint"] >= 50 / state["checkpoints"]
    )
    assert state["mb_per_checkpoint"] > 0
    for name, result in (("throughput", tp), ("latency", lat), ("memory", mem)):
        data = orjson.loads((tmp_path / f"{name}.json").read_bytes())
        assert data == orjson.loads(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY))
        assert data["machine"]["cpus"] >= 1 and data["broker"]["engine"] == engine
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert tp["ratio"] == pytest.approx(tp["contexts_per_s"] / tp["passthrough_per_s"], abs=0.01)
    md = (tmp_path / "latency.md").read_text()
    assert f"| p99_ms | {lat['p99_ms']} | {lat['passthrough_p99_ms']} |" in md
    assert math.isfinite(mem["growth_mb_per_million"])
    # The slowest 1% explained from the service's loop trace, and the timeline drawn.
    tail = lat["slowest_1pct"]
    assert tail["decisions"] == round(3000 * 0.8 * 0.01)
    assert set(tail["in_loop_ms"]) <= set(STAGES) and "decide" in tail["in_loop_ms"]
    assert tail["latency_ms"] >= lat["p99_ms"] * 0.99
    assert "slowest 1%" in md and (tmp_path / "latency-timeline.png").stat().st_size > 1000
