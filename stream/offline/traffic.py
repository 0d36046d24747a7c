"""Traffic simulator for the demo: contexts in, decisions read back, rewards after a delay.

Rewards come from a hidden model the service never sees: a Bernoulli draw whose mean
depends on the context and the chosen action. The simulator also keeps what uniform
random choice and every fixed action would have earned in expectation on the same
events, so the demo can show how much the service learned.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from stream.kafka.clients import tool_config


@dataclass(frozen=True)
class HiddenDomain:
    name: str
    candidates: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]  # categorical context fields and their values
    base: dict[str, dict[str, float]]  # action -> value of the first categorical -> mean
    slope: dict[str, float]  # action -> effect of the numeric field "size" in [0, 1]

    def context(self, rng: random.Random) -> dict[str, Any]:
        ctx: dict[str, Any] = {k: rng.choice(v) for k, v in self.categories.items()}
        ctx["size"] = round(rng.random(), 3)
        ctx["premium"] = rng.random() < 0.3
        return ctx

    def mean_reward(self, ctx: dict[str, Any], action: str) -> float:
        first = next(iter(self.categories))
        p = self.base[action][ctx[first]] + self.slope[action] * (ctx["size"] - 0.5)
        return min(0.98, max(0.02, p))


DOMAINS = (
    HiddenDomain(
        "model_routing",
        ("small-fast", "large-accurate", "code-specialist", "long-context"),
        {"task": ("chat", "code", "summarize", "extract"), "region": ("eu", "us", "apac")},
        {
            "small-fast": {"chat": 0.70, "code": 0.30, "summarize": 0.45, "extract": 0.65},
            "large-accurate": {"chat": 0.60, "code": 0.55, "summarize": 0.60, "extract": 0.55},
            "code-specialist": {"chat": 0.25, "code": 0.85, "summarize": 0.20, "extract": 0.40},
            "long-context": {"chat": 0.40, "code": 0.35, "summarize": 0.62, "extract": 0.45},
        },
        {"small-fast": -0.3, "large-accurate": 0.0, "code-specialist": 0.0, "long-context": 0.5},
    ),
    HiddenDomain(
        "content_analysis",
        ("keyword-rules", "bert-classifier", "vision-model", "llm-judge"),
        {"content_type": ("text", "image", "video", "mixed"), "language": ("en", "de", "ja")},
        {
            "keyword-rules": {"text": 0.55, "image": 0.10, "video": 0.10, "mixed": 0.30},
            "bert-classifier": {"text": 0.80, "image": 0.15, "video": 0.20, "mixed": 0.45},
            "vision-model": {"text": 0.20, "image": 0.85, "video": 0.70, "mixed": 0.50},
            "llm-judge": {"text": 0.65, "image": 0.55, "video": 0.45, "mixed": 0.70},
        },
        {"keyword-rules": 0.0, "bert-classifier": -0.2, "vision-model": 0.0, "llm-judge": 0.2},
    ),
)


@dataclass
class DomainTally:
    """Per-domain totals; expectations are sums of mean rewards over the same events."""

    decisions: int = 0
    rewards: int = 0
    reward_sum: float = 0.0
    recent: list[float] = field(default_factory=list)  # realised rewards, last 1000
    uniform_sum: float = 0.0
    oracle_sum: float = 0.0
    fixed_sum: dict[str, float] = field(default_factory=dict)

    def add_decision(self, dom: HiddenDomain, ctx: dict[str, Any]) -> None:
        means = {a: dom.mean_reward(ctx, a) for a in dom.candidates}
        self.decisions += 1
        self.uniform_sum += sum(means.values()) / len(means)
        self.oracle_sum += max(means.values())
        for a, m in means.items():
            self.fixed_sum[a] = self.fixed_sum.get(a, 0.0) + m

    def add_reward(self, r: float) -> None:
        self.rewards += 1
        self.reward_sum += r
        self.recent.append(r)
        if len(self.recent) > 1000:
            del self.recent[:500]


def simulate(
    bootstrap: str,
    contexts_topic: str,
    rewards_topic: str,
    decisions_topic: str,
    events: int,
    rate: float,
    seed: int,
    max_delay_s: float,
    reports: mp.Queue[Any],
    stop: Any,
) -> None:
    """Process entry point. Sends ``("progress"|"done", {...})`` tuples on ``reports``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the demo stops us through ``stop``
    rng = random.Random(seed)
    producer = Producer(tool_config(bootstrap, {"linger.ms": 5}))
    consumer = Consumer(
        tool_config(
            bootstrap,
            {
                "group.id": f"demo-sim-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 2000,
                "heartbeat.interval.ms": 500,
                "fetch.wait.max.ms": 10,
            },
        )
    )
    consumer.subscribe([decisions_topic])
    by_name = {d.name: d for d in DOMAINS}
    tallies = {d.name: DomainTally() for d in DOMAINS}
    sent: dict[str, tuple[str, dict[str, Any]]] = {}  # event_id -> (domain, context)
    due: list[tuple[float, str, str, float]] = []  # (time, event_id, domain, reward)
    produced = rewards_sent = 0
    start = time.monotonic()
    last_report = 0.0
    prefix = uuid.uuid4().hex[:6]
    while not stop.is_set():
        now = time.monotonic()
        # 1. Contexts, paced to the requested rate.
        target = min(events, int((now - start) * rate) + 1)
        while produced < target:
            dom = rng.choice(DOMAINS)
            ctx = dom.context(rng)
            eid = f"{prefix}-{produced}"
            sent[eid] = (dom.name, ctx)
            doc = {
                "event_id": eid,
                "domain": dom.name,
                "context": ctx,
                "candidates": list(dom.candidates),
                "timestamp": time.time(),
            }
            producer.produce(contexts_topic, orjson.dumps(doc), dom.name.encode())
            produced += 1
        # 2. Decisions: draw the reward now, send it after a random delay.
        for m in consumer.consume(num_messages=1000, timeout=0.01):
            value = m.value()
            if m.error() or value is None:
                continue
            d = orjson.loads(value)
            item = sent.pop(d["event_id"], None)
            if item is None:
                continue
            name, ctx = item
            dom = by_name[name]
            tallies[name].add_decision(dom, ctx)
            reward = 1.0 if rng.random() < dom.mean_reward(ctx, d["action"]) else 0.0
            heapq.heappush(due, (now + rng.random() * max_delay_s, d["event_id"], name, reward))
        # 3. Rewards whose delay has passed.
        while due and due[0][0] <= now:
            _, eid, name, reward = heapq.heappop(due)
            doc = {"event_id": eid, "domain": name, "reward": reward, "timestamp": time.time()}
            producer.produce(rewards_topic, orjson.dumps(doc), name.encode())
            tallies[name].add_reward(reward)
            rewards_sent += 1
        producer.poll(0)
        finished = produced >= events and not sent and not due
        if finished or now - last_report >= 0.25:
            last_report = now
            producer.flush(5)
            summary = {
                "produced": produced,
                "rewards_sent": rewards_sent,
                "elapsed": now - start,
                "tallies": {k: vars(v) for k, v in tallies.items()},
            }
            reports.put(("done" if finished else "progress", summary))
            if finished:
                break
        if produced >= events and not due:
            time.sleep(0.005)
    producer.flush(10)
    consumer.close()
