"""What the end-to-end benchmarks share: a broker, fresh topics, and the service as its own
process (`bandit-stream run`, as deployed) whose log goes to a file."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.config import Settings, load_settings, settings_env
from stream.kafka.brokers import make_broker
from stream.kafka.clients import admin_config, tool_config
from stream.kafka.embedded import FAST_CLIENT_SETTINGS
from stream.kafka.topics import ensure_topics


def topic_reader(
    bootstrap: str, topic: str | tuple[str, ...], group: str, fetch_wait_ms: int
) -> Consumer:
    """A consumer assigned every partition of ``topic`` (or of each topic) from its start: no
    group join, which on the embedded broker takes seconds that a measurement would count."""
    c = Consumer(
        tool_config(
            bootstrap,
            {"group.id": group, "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms},
        )
    )
    tps = []
    for t in (topic,) if isinstance(topic, str) else topic:
        md = c.list_topics(t, timeout=10).topics[t]
        tps += [TopicPartition(t, p, OFFSET_BEGINNING) for p in md.partitions]
    c.assign(tps)
    return c


def bootstrap(
    stack: ExitStack, given: str | None = None, engine: str = "embedded"
) -> tuple[str, dict[str, str]]:
    """The broker address and what it is (the results' ``broker`` field): ``given``, else
    RL_KAFKA_BOOTSTRAP_SERVERS, else a broker of ``engine`` started for the run."""
    given = given or os.environ.get("RL_KAFKA_BOOTSTRAP_SERVERS")
    if given:
        return given, {"engine": engine, "version": "external cluster", "bootstrap": given}
    broker = make_broker(engine)  # type: ignore[arg-type]
    stack.enter_context(broker)
    return broker.bootstrap_servers, {"engine": broker.engine, "version": broker.version}


def fresh_settings(bootstrap: str, prefix: str, **extra: Any) -> Settings:
    """Settings on new topics (created) and a new group, so runs never see each other."""
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    s = load_settings(
        **FAST_CLIENT_SETTINGS,
        kafka_bootstrap_servers=bootstrap,
        kafka_group_id=tag,
        topic_contexts=f"{tag}.contexts",
        topic_rewards=f"{tag}.rewards",
        topic_decisions=f"{tag}.decisions",
        topic_metrics=f"{tag}.metrics",
        topic_dead_letter=f"{tag}.dead-letter",
        topic_state=f"{tag}.state",
        state_dir=Path(tempfile.mkdtemp(prefix=f"bandit-{prefix}-")),
        reward_wait_s=600.0,
        **extra,
    )
    ensure_topics(s, AdminClient(admin_config(s)))
    return s


def service_env(s: Settings) -> dict[str, str]:
    """The service process's environment: all of ``s`` — the user's RL_* settings (policy,
    batch size, ...) with the benchmark's broker, topics, group and state directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RL_", "ENABLE_RL_"))}
    env.update(settings_env(s))
    env["RL_METRICS_PORT"] = "0"
    env["RL_LOG_FORMAT"] = "json"
    return env


class ServiceProcess:
    """`bandit-stream run` as its own process. Its log goes to a file: a pipe nobody reads
    while it runs would fill and block the service on its next log line."""

    def __init__(self, s: Settings, stack: ExitStack) -> None:
        exe = Path(sys.executable).with_name("bandit-stream")
        self.log_path = Path(s.state_dir) / "service.log"
        self._log = stack.enter_context(open(self.log_path, "w"))  # noqa: SIM115 - the stack closes it
        self.proc = subprocess.Popen([str(exe), "run"], env=service_env(s), stderr=self._log)
        stack.callback(self.stop)
        self.ps = psutil.Process(self.proc.pid)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20 if self.alive else 0.0

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM, then the exit code (-9 if it had to be killed after 60 s)."""
        if self.alive:
            self.proc.terminate()
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return -9
        return self.proc.returncode if self.proc.returncode is not None else -9


def state_topic_traffic(bootstrap: str, topic: str) -> dict[str, float]:
    """What the service published to its state topic, read back whole: checkpoints (one
    marker per held partition each), their records' MB per checkpoint, the share of deltas."""
    c = topic_reader(bootstrap, topic, f"state-reader-{uuid.uuid4().hex[:8]}", 100)
    ends = {
        tp.partition: c.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        for tp in c.assignment()
    }
    markers: dict[str, int] = {}
    size = {"base": 0, "delta": 0}
    count = {"base": 0, "delta": 0}
    left = {p for p, end in ends.items() if end > 0}
    try:
        while left:
            msgs = c.consume(1000, timeout=2.0)
            if not msgs:
                break
            for m in msgs:
                if m.error() is not None:
                    continue
                key, value = (m.key() or b"").decode(), m.value()
                if (m.offset() or 0) + 1 >= ends.get(m.partition() or 0, 0):
                    left.discard(m.partition() or 0)
                if value is None:
                    continue
                if key.startswith("#"):
                    markers[key] = markers.get(key, 0) + 1
                    continue
                kind = "delta" if "#" in key else "base"
                size[kind] += len(value)
                count[kind] += 1
    finally:
        c.close()
    checkpoints = max(markers.values(), default=0)
    total = size["base"] + size["delta"]
    return {
        "checkpoints": checkpoints,
        "mb_per_checkpoint": round(total / 2**20 / max(1, checkpoints), 2),
        "records_per_checkpoint": round((count["base"] + count["delta"]) / max(1, checkpoints), 1),
        "delta_share": round(count["delta"] / max(1, count["base"] + count["delta"]), 3),
    }
