"""`bandit-stream bench soak`: a long run through a real broker with 1% garbage.

The service runs as its own process (`bandit-stream run`), exactly as deployed, so a crash
is an exit and its memory is its own. This process streams contexts (a share of them
garbage of every kind the decoder refuses) and, a little later, a reward for every valid
one; it samples the service's RSS every second and counts the decisions and dead letters
on their topics. The report says whether decisions == valid contexts, dead letters ==
garbage, and the service never crashed, with the RSS timeline.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from stream.bench import harness
from stream.bench.load import send_waiting
from stream.bench.report import (
    machine,
    markdown_table,
    progress_bar,
    pyplot,
    write_json,
    write_markdown,
)
from stream.kafka.clients import tool_config

GARBAGE: list[bytes] = [
    b"\xff\xfe\x00 not utf-8",
    b"{truncated json",
    b"[1, 2, 3]",
    b'{"event_id": "g", "domain": "shop", "context": {}, "candidates": []}',
    b'{"event_id": "g", "domain": "bad domain!", "context": {}, "candidates": ["a"]}',
    b'{"event_id": "g", "domain": "shop", "context": {"x": NaN}, "candidates": ["a"]}',
    b'{"domain": "shop", "context": {}, "candidates": ["a"]}',
    b'{"event_id": "g", "domain": "shop", "context": {"x": [1]}, "candidates": ["a"]}',
    b"",
]
DOMAINS = [f"soak{i}" for i in range(8)]
CANDIDATES = ["a", "b", "c", "d"]


class _Counter:
    """Counts a topic's messages by reading them (Tansu's high watermarks under-report)."""

    def __init__(self, bootstrap: str, topic: str, tag: str) -> None:
        self.c = harness.topic_reader(bootstrap, topic, f"soak-count-{tag}", 50)
        self.n = 0
        self.codes: Counter[str] = Counter()  # dead letters by their error_code header

    def poll(self, timeout: float = 0.2) -> int:
        for m in self.c.consume(10000, timeout):
            if m.error() is None:
                self.n += 1
                for pair in m.headers() or []:
                    if pair[0] == "error_code" and isinstance(pair[1], bytes):
                        self.codes[pair[1].decode()] += 1
        return self.n

    def close(self) -> None:
        self.c.close()


def run_soak(
    events: int,
    garbage: float,
    out: Path,
    bootstrap: str | None = None,
    seed: int = 0,
    rate: float = 10_000.0,
    engine: str = "embedded",
) -> dict[str, Any]:
    """Stream ``events`` at ``rate`` per second (0: as fast as possible). Paced, the run
    is real time: a flood far ahead of its rewards would instead evict decisions at
    RL_MAX_PENDING and dead-letter their late rewards, which is correct but not a soak."""
    with ExitStack() as stack:
        bootstrap, broker = harness.bootstrap(stack, bootstrap, engine)
        s = harness.fresh_settings(bootstrap, "soak")
        tag = s.kafka_group_id
        svc = harness.ServiceProcess(s, stack)
        producer = Producer(tool_config(bootstrap, {"linger.ms": 5, "compression.type": "lz4"}))
        decided = _Counter(bootstrap, s.topic_decisions, tag)
        dead_letters = _Counter(bootstrap, s.topic_dead_letter, tag)
        rng = random.Random(seed)
        rss: list[list[float]] = []
        start = time.monotonic()
        last_sample = 0.0
        valid = bad = 0
        lag: list[tuple[str, str]] = []

        def sample() -> None:
            nonlocal last_sample
            now = time.monotonic()
            if now - last_sample >= 1.0 and svc.alive:
                last_sample = now
                rss.append([round(now - start, 2), round(svc.rss_mb(), 1)])

        with progress_bar(total=events, desc="soak: producing", unit="ev", file=sys.stderr) as bar:
            t0 = time.monotonic()
            for i in range(events):
                if rate > 0 and i % 100 == 0:
                    ahead = t0 + i / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                domain = DOMAINS[i % len(DOMAINS)]
                if rng.random() < garbage:
                    send_waiting(
                        producer, s.topic_contexts, GARBAGE[bad % len(GARBAGE)], domain.encode()
                    )
                    bad += 1
                else:
                    doc = {
                        "event_id": f"s{i}",
                        "domain": domain,
                        "context": {"x": rng.random(), "tier": rng.choice(["free", "pro"])},
                        "candidates": CANDIDATES,
                    }
                    send_waiting(producer, s.topic_contexts, orjson.dumps(doc), domain.encode())
                    lag.append((f"s{i}", domain))
                    valid += 1
                if len(lag) > 1000:  # rewards trail their contexts by ~1000 events
                    eid, d = lag.pop(0)
                    reward = {"event_id": eid, "domain": d, "reward": float(rng.random() < 0.5)}
                    send_waiting(producer, s.topic_rewards, orjson.dumps(reward), d.encode())
                if i % 1000 == 0:
                    producer.poll(0)
                    sample()
                    decided.poll(0)  # keep reading as we go: the final count stays short
                    dead_letters.poll(0)
                    bar.update(i - bar.n)
            for eid, d in lag:
                reward = {"event_id": eid, "domain": d, "reward": 1.0}
                send_waiting(producer, s.topic_rewards, orjson.dumps(reward), d.encode())
            producer.flush(60)
            bar.update(events - bar.n)

        decisions = dead = 0
        deadline = time.monotonic() + max(120.0, events / 2000)
        with progress_bar(
            total=events, desc="soak: service catching up", unit="ev", file=sys.stderr
        ) as bar:
            while time.monotonic() < deadline and svc.alive:
                decisions, dead = decided.poll(), dead_letters.poll()
                bar.update(decisions + dead - bar.n)
                if decisions >= valid and dead >= bad:
                    break
                sample()
        end = time.monotonic() + 2.0  # anything extra (a decision twice) would show now
        while time.monotonic() < end:
            decisions, dead = decided.poll(), dead_letters.poll()
        crashed = not svc.alive
        if not crashed:
            sample()
        exit_code = svc.stop()
        stderr = svc.log()
        if os.environ.get("BANDIT_SOAK_LOG"):
            Path(os.environ["BANDIT_SOAK_LOG"]).write_text(stderr)
        decided.close()
        dead_letters.close()
        elapsed = time.monotonic() - start

    result: dict[str, Any] = {
        "events": events,
        "garbage_share": garbage,
        "valid_contexts": valid,
        "garbage": bad,
        "decisions": decisions,
        "dead_letters": dead,
        "decisions_equal_valid": decisions == valid,
        "dead_letters_equal_garbage": dead == bad,
        "dead_letters_by_code": dict(dead_letters.codes),
        "offered_per_s": rate,
        "crashes": int(crashed),
        "exit_code": exit_code,
        "tracebacks_in_log": stderr.count("Traceback"),
        "duration_s": round(elapsed, 1),
        "events_per_s": round(events / elapsed, 1),
        "rss_mb": rss,
        "broker": broker,
        "machine": machine(),
    }
    _write(result, out)
    return result


def _write(r: dict[str, Any], out: Path) -> None:
    write_json(out, "soak", r)
    rows = [
        ["broker", f"{r['broker']['engine']} ({r['broker']['version']})"],
        ["events", r["events"]],
        ["valid contexts / decisions", f"{r['valid_contexts']} / {r['decisions']}"],
        ["garbage / dead letters", f"{r['garbage']} / {r['dead_letters']}"],
        [
            "dead letters by code",
            ", ".join(f"{k} {v}" for k, v in sorted(r["dead_letters_by_code"].items())),
        ],
        ["offered rate", f"{r['offered_per_s']:.0f} events/s"],
        ["crashes", r["crashes"]],
        ["exit code after SIGTERM", r["exit_code"]],
        ["tracebacks in the log", r["tracebacks_in_log"]],
        ["duration", f"{r['duration_s']} s ({r['events_per_s']} events/s)"],
        [
            "RSS first / last / max",
            " / ".join(
                f"{x:.0f} MB"
                for x in (
                    (r["rss_mb"][0][1], r["rss_mb"][-1][1], max(m for _, m in r["rss_mb"]))
                    if r["rss_mb"]
                    else (0, 0, 0)
                )
            ),
        ],
    ]
    write_markdown(out, "soak", "# Soak\n\n" + markdown_table(["", "value"], rows) + "\n")
    if r["rss_mb"]:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([t for t, _ in r["rss_mb"]], [m for _, m in r["rss_mb"]])
        ax.set_xlabel("seconds")
        ax.set_ylabel("service RSS (MB)")
        ax.set_title(f"soak: {r['events']:,} events, {r['garbage']:,} garbage")
        fig.tight_layout()
        fig.savefig(out / "soak.png", dpi=110)
        plt.close(fig)
