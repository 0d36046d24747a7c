"""Load for the end-to-end benchmarks: a producer of contexts and rewards at a paced
rate, a reader of decisions that times each one, and the bare consume -> produce
passthrough that is the broker's ceiling."""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Producer

from stream.bench import harness
from stream.kafka.clients import tool_config

CANDIDATES = ["a", "b", "c", "d"]


def send_waiting(producer: Producer, topic: str, value: bytes | None, key: bytes | None) -> None:
    """Produce, polling while the local queue is full: a benchmark never drops a record."""
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.01)


def messages(
    n: int, domains: int, reward_delay: int, seed: int, with_rewards: bool, timed: bool
) -> Iterator[tuple[bool, bytes, bytes]]:
    """(is_context, value, key) in streaming order: contexts, each reward after
    ``reward_delay`` more contexts. ``timed`` puts the send time in the event id."""
    rng = random.Random(seed)
    names = [f"dom{i}".encode() for i in range(domains)]
    trail: deque[tuple[str, bytes]] = deque()
    for i in range(n):
        key = names[i % domains]
        eid = f"{i}:{time.time_ns()}" if timed else f"{i}:0"
        ctx = {
            "event_id": eid,
            "domain": key.decode(),
            "context": {"x": rng.random(), "tier": "pro" if rng.random() < 0.3 else "free"},
            "candidates": CANDIDATES,
        }
        yield True, orjson.dumps(ctx), key
        if with_rewards:
            trail.append((eid, key))
            if len(trail) > reward_delay:
                old, k = trail.popleft()
                r = {"event_id": old, "domain": k.decode(), "reward": float(rng.random() < 0.5)}
                yield False, orjson.dumps(r), k
    for old, k in trail:
        yield False, orjson.dumps({"event_id": old, "domain": k.decode(), "reward": 1.0}), k


def produce(
    bootstrap: str,
    contexts: str,
    rewards: str | None,
    n: int,
    domains: int,
    rate: float,
    reward_delay: int,
    seed: int,
    linger_ms: int | None = None,
) -> None:
    """Producer process. Unpaced (``rate`` 0, the throughput runs) it builds every message
    first and then only streams them, so JSON encoding does not take CPU from the
    service on a small machine; paced, it builds each as it goes, with the send time in
    the event id for the latency."""
    # Paced, as an application waiting for its decisions: each message sent at once (unless
    # ``linger_ms`` says otherwise: a run that measures no latency batches, as the unpaced
    # do, leaving the CPU and the broker to the service). One producer for both topics: a
    # reward never reaches the broker before its context (an application has the decision
    # before it rewards it); a second connection let rewards overtake their contexts.
    p = Producer(
        tool_config(
            bootstrap,
            {
                "linger.ms": linger_ms if linger_ms is not None else 0 if rate > 0 else 5,
                "queue.buffering.max.messages": 500000,
            },
        )
    )

    msgs: Iterable[tuple[bool, bytes, bytes]]
    msgs = messages(n, domains, reward_delay, seed, rewards is not None, timed=rate > 0)
    if rate <= 0:
        msgs = list(msgs)
    start = time.monotonic()
    sent = 0
    stream = iter(msgs)
    while True:
        if rate > 0:
            # Paced one context at a time, before the next message is built: its event id
            # carries its send time, and contexts arrive spread out, not in bursts.
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        item = next(stream, None)
        if item is None:
            break
        is_context, value, key = item
        if is_context:
            sent += 1
            send_waiting(p, contexts, value, key)
        else:
            assert rewards is not None
            send_waiting(p, rewards, value, key)
        if sent % 1000 == 0:
            p.poll(0)
    p.flush(120)


class DecisionReader:
    """Reads a topic from the start: receive time and event id of every message."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.c = harness.topic_reader(
            bootstrap, topic, f"bench-reader-{uuid.uuid4().hex[:8]}", fetch_wait_ms=5
        )
        self.times: list[float] = []
        self.sent: list[float] = []
        self.decided: list[float] = []  # the decision's own timestamp (nan: none)

    def read(self, n: int, timeout: float, bar: Any = None) -> None:
        deadline = time.monotonic() + timeout
        while len(self.times) < n and time.monotonic() < deadline:
            # Never wait to fill a batch: the receive time is the latency's end.
            msgs = self.c.consume(5000, 0) or self.c.consume(1, 0.2)
            now = time.time()
            for m in msgs:
                if m.error() is not None:
                    continue
                self.times.append(now)
                try:
                    doc = orjson.loads(m.value() or b"{}")
                    self.sent.append(int(doc["event_id"].split(":")[1]) / 1e9)
                except (KeyError, ValueError, IndexError, orjson.JSONDecodeError):
                    doc = {}
                    self.sent.append(now)
                self.decided.append(float(doc.get("timestamp", "nan")))
            if bar is not None:
                bar.update(len(self.times) - bar.n)

    def reset(self) -> None:
        """Forget what was read so far (a warm-up's decisions)."""
        self.times, self.sent, self.decided = [], [], []

    def rate(self) -> float:
        """Messages per second over the middle 80% (no start-up, no drain)."""
        t = np.sort(np.asarray(self.times))
        if len(t) < 10:
            return 0.0
        a, b = int(len(t) * 0.1), int(len(t) * 0.9)
        span = t[b] - t[a]
        return (b - a) / span if span > 0 else float("inf")

    def close(self) -> None:
        self.c.close()


def passthrough(bootstrap: str, src: tuple[str, ...], dst: str, n: int, batch: int) -> None:
    """The ceiling: consume in batches from the same input topics as the service (contexts,
    then rewards) and produce each context on, nothing else."""
    c = harness.topic_reader(bootstrap, src, f"passthrough-{uuid.uuid4().hex[:8]}", 10)
    contexts = src[0]
    p = Producer(tool_config(bootstrap, {"linger.ms": 2, "compression.type": "lz4"}))
    done = 0
    deadline = time.monotonic() + 600
    while done < n and time.monotonic() < deadline:
        # Like the service: whatever is fetched, waiting only when nothing is there (a
        # consume that waits to fill its batch adds up to its timeout to every latency).
        for m in c.consume(batch, 0) or c.consume(1, 0.1):
            if m.error() is None and m.topic() == contexts:
                send_waiting(p, dst, m.value(), m.key())
                done += 1
        p.poll(0)
    p.flush(60)
    c.close()
