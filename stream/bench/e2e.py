"""End-to-end benchmarks through a real broker: throughput, latency and memory.

One service process (`bandit-stream run`, as deployed) on the embedded broker, or on
``RL_KAFKA_BOOTSTRAP_SERVERS``; a producer process streams contexts over many domains and,
``reward_delay`` events later, each one's reward; this process reads the decisions.

- ``throughput``: contexts decided per second with rewards flowing (over the middle 80% of
  the run, so start-up and drain do not count), beside a bare consume -> produce
  passthrough on the same broker (reading the same two input topics, with the same batch
  sizes) as the ceiling, and the ratio. The broker is warmed first (see ``_start``).
- ``latency``: context produced -> decision consumed at a fixed offered load (default half
  the measured throughput): p50 / p95 / p99 / p99.9 and a CDF plot.
- ``memory``: the service's RSS over N events on many domains, and its growth per million
  events over the second half of the run.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from stream.bench import harness
from stream.bench.harness import ServiceProcess
from stream.bench.load import DecisionReader, passthrough, produce
from stream.bench.report import (
    machine,
    markdown_table,
    progress_bar,
    pyplot,
    write_json,
    write_markdown,
)
from stream.bench.tail import breakdown_table, plot_timeline, slowest
from stream.config import Settings

WARM_EVENTS = 20_000
SERVICE_WARM_S = 8.0


def _spawn(target: Any, *args: Any) -> Any:
    ctx = mp.get_context("spawn")  # librdkafka threads run here: never fork
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _wait_ready(svc: ServiceProcess, s: Settings) -> None:
    """Until the service consumes (its log says it has partitions)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "assigned" in svc.log():
            return
        if svc.proc.poll() is not None:
            raise RuntimeError(f"the service exited: {svc.log()[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError("the service never got its partitions")


def _on(broker: dict[str, str]) -> str:
    return f"Broker: {broker['engine']} ({broker['version']}).\n\n"


def _start(
    stack: ExitStack,
    engine: str,
    warm_rate: float | None = None,
    warm_max: int = WARM_EVENTS * 2,
    **extra: Any,
) -> tuple[str, dict[str, str], Settings, ServiceProcess, DecisionReader]:
    """A broker (and what it is), fresh topics, the service consuming them, and a reader
    of its decisions. With ``warm_rate``, a passthrough at that rate (0: unpaced, WARM_EVENTS
    of it; else 30 s of it; ``warm_max`` events at most) first warms the broker: a fresh
    JVM's first seconds of
    produce requests queue behind its compiler, which the first run measured would count
    and the next not."""
    bootstrap, broker = harness.bootstrap(stack, engine=engine)
    if warm_rate is not None:
        n = int(min(warm_max, WARM_EVENTS if warm_rate <= 0 else warm_rate * 30))
        _run_passthrough(
            bootstrap,
            n,
            domains=100,
            rate=warm_rate,
            reward_delay=1000,
            seed=9,
            batch=1000,
            desc="broker warm-up",
            timeout=120.0,
        )
    s = harness.fresh_settings(bootstrap, "bench", **extra)
    svc = ServiceProcess(s, stack)
    _wait_ready(svc, s)
    return bootstrap, broker, s, svc, DecisionReader(bootstrap, s.topic_decisions)


def _run_passthrough(
    bootstrap: str,
    events: int,
    domains: int,
    rate: float,
    reward_delay: int,
    seed: int,
    batch: int,
    desc: str,
    timeout: float,
) -> DecisionReader:
    """The same producer (contexts and rewards) into a bare consume -> produce passthrough
    on fresh topics of the same broker; returns the (closed) reader of what it passed on."""
    s = harness.fresh_settings(bootstrap, "bench")
    reader = DecisionReader(bootstrap, s.topic_decisions)
    src = (s.topic_contexts, s.topic_rewards)
    pt = _spawn(passthrough, bootstrap, src, s.topic_decisions, events, batch)
    prod = _spawn(produce, bootstrap, *src, events, domains, rate, reward_delay, seed)
    with progress_bar(total=events, desc=desc, unit="msg", file=sys.stderr) as bar:
        reader.read(events, timeout=timeout, bar=bar)
    prod.join(60)
    pt.join(60)
    reader.close()
    return reader


def throughput(
    events: int, domains: int, out: Path, reward_delay: int = 1000, engine: str = "embedded"
) -> dict[str, Any]:
    with ExitStack() as stack:
        bootstrap, broker, s, svc, reader = _start(stack, engine, warm_rate=0.0, warm_max=events)
        prod = _spawn(
            produce,
            bootstrap,
            s.topic_contexts,
            s.topic_rewards,
            events,
            domains,
            0.0,
            reward_delay,
            0,
        )
        timeout = max(120.0, events / 1000)
        with progress_bar(
            total=events, desc="throughput: service", unit="ctx", file=sys.stderr
        ) as bar:
            reader.read(events, timeout=timeout, bar=bar)
        prod.join(60)
        decided = len(reader.times)
        service_rate = reader.rate()
        reader.close()
        code = svc.stop()

        # The ceiling: the same producer into a bare consume -> produce passthrough.
        pass_rate = _run_passthrough(
            bootstrap,
            events,
            domains,
            0.0,
            reward_delay,
            0,
            s.batch_size,
            "throughput: passthrough",
            timeout,
        ).rate()
    result = {
        "events": events,
        "domains": domains,
        "decided": decided,
        "contexts_per_s": round(service_rate, 1),
        "passthrough_per_s": round(pass_rate, 1),
        "ratio": round(service_rate / pass_rate, 3) if pass_rate else None,
        "rewards_flowing": True,
        "service_exit_code": code,
        "broker": broker,
        "machine": machine(),
    }
    write_json(out, "throughput", result)
    rows = [
        [k, result[k]]
        for k in ("events", "domains", "contexts_per_s", "passthrough_per_s", "ratio")
    ]
    write_markdown(
        out,
        "throughput",
        "# Throughput\n\n" + _on(broker) + markdown_table(["", "value"], rows) + "\n",
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(["service", "passthrough"], [service_rate, pass_rate], color=["tab:blue", "tab:gray"])
    ax.set_ylabel("messages decided / passed per second")
    ax.set_title(f"throughput, {domains} domains, rewards flowing")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    return result


def _percentiles(end: list[float], start: list[float]) -> tuple[np.ndarray, dict[float, float]]:
    """Sorted steady-state ``end - start`` (ms; the first and last 10% are start-up and
    drain) and its p50 / p95 / p99 / p99.9."""
    lat = (np.asarray(end) - np.asarray(start)) * 1000.0
    a, b = int(len(lat) * 0.1), int(len(lat) * 0.9)
    steady = np.sort(lat[a:b]) if b > a else np.sort(lat)
    steady = steady[np.isfinite(steady)]
    if not len(steady):
        return steady, {q: float("nan") for q in (50, 95, 99, 99.9)}
    return steady, {q: float(np.percentile(steady, q)) for q in (50, 95, 99, 99.9)}


def latency(
    events: int, domains: int, rate: float, out: Path, engine: str = "embedded"
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "loop-trace.jsonl"
    trace.unlink(missing_ok=True)
    with ExitStack() as stack:
        bootstrap, broker, s, svc, reader = _start(
            stack, engine, warm_rate=rate, warm_max=events, loop_trace=str(trace)
        )
        # The service warmed too, unmeasured: its domains made and learning (a deployed
        # service is past its first seconds); the same stream at the same rate.
        warm = min(events // 4, int(rate * SERVICE_WARM_S))
        src = (s.topic_contexts, s.topic_rewards)
        prod = _spawn(produce, bootstrap, *src, warm, domains, rate, 1000, 11)
        reader.read(warm, timeout=warm / rate + 120)
        prod.join(60)
        reader.reset()
        prod = _spawn(produce, bootstrap, *src, events, domains, rate, 1000, 1)
        timeout = events / rate + 120
        with progress_bar(
            total=events, desc=f"latency at {rate:.0f}/s", unit="ctx", file=sys.stderr
        ) as bar:
            reader.read(events, timeout=timeout, bar=bar)
        prod.join(60)
        reader.close()
        svc.stop()

        # The broker's own floor at the same load: a bare consume -> produce passthrough
        # (same client settings, no decisions), so the service's share is visible.
        reader2 = _run_passthrough(
            bootstrap,
            events,
            domains,
            rate,
            1000,
            1,
            s.batch_size,
            f"passthrough at {rate:.0f}/s",
            timeout,
        )
    steady, pct = _percentiles(reader.times, reader.sent)
    floor, fpct = _percentiles(reader2.times, reader2.sent)
    # Where the service's time goes: context sent -> decided, decided -> decision read.
    _, inbound = _percentiles(reader.decided, reader.sent)
    _, outbound = _percentiles(reader.times, reader.decided)
    sent, decided, got = (np.asarray(x) for x in (reader.sent, reader.decided, reader.times))
    tail = slowest(sent, decided, got, trace)
    result = {
        "events": events,
        "domains": domains,
        "offered_per_s": rate,
        "decided": len(reader.times),
        "p50_ms": round(pct[50], 3),
        "p95_ms": round(pct[95], 3),
        "p99_ms": round(pct[99], 3),
        "p999_ms": round(pct[99.9], 3),
        "passthrough_p50_ms": round(fpct[50], 3),
        "passthrough_p95_ms": round(fpct[95], 3),
        "passthrough_p99_ms": round(fpct[99], 3),
        "passthrough_p999_ms": round(fpct[99.9], 3),
        "to_decision_p50_ms": round(inbound[50], 3),
        "to_decision_p99_ms": round(inbound[99], 3),
        "decision_to_reader_p50_ms": round(outbound[50], 3),
        "decision_to_reader_p99_ms": round(outbound[99], 3),
        "slowest_1pct": tail,
        "broker": broker,
        "machine": machine(),
    }
    write_json(out, "latency", result)
    keys = ("p50_ms", "p95_ms", "p99_ms", "p999_ms")
    rows = [[k, result[k], result["passthrough_" + k]] for k in keys]
    write_markdown(
        out,
        "latency",
        f"# Latency\n\n{_on(broker)}context produced -> decision consumed at {rate:.0f} "
        "contexts/s; "
        "beside it the same load through a bare consume -> produce passthrough on the same "
        "broker (the broker's floor).\n\n"
        + markdown_table(["", "service", "passthrough"], rows)
        + "\n\nThe service's share, by the decision's own timestamp: context sent -> decided "
        f"p50 {result['to_decision_p50_ms']} ms, p99 {result['to_decision_p99_ms']} ms; "
        f"decided -> read p50 {result['decision_to_reader_p50_ms']} ms, p99 "
        f"{result['decision_to_reader_p99_ms']} ms.\n\n"
        f"What the loop was doing while the slowest 1% ({tail.get('decisions', 0)} decisions, "
        f"mean {tail.get('latency_ms')} ms) waited, mean ms per decision (from the "
        "service's RL_LOOP_TRACE):\n\n"
        + markdown_table(["", "ms"], breakdown_table(tail))
        + "\n\nlatency-timeline.png: latency over the run, checkpoints, learning chunks and "
        "full collections marked.\n",
    )
    plot_timeline(
        sent, got, trace, out / "latency-timeline.png", f"latency over time at {rate:.0f}/s"
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steady, np.linspace(0, 1, len(steady)), label="service")
    ax.plot(floor, np.linspace(0, 1, len(floor)), label="passthrough", color="tab:gray")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of decisions")
    ax.set_title(f"latency CDF at {rate:.0f} contexts/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    return result


def memory(
    events: int, domains: int, rate: float, out: Path, engine: str = "embedded"
) -> dict[str, Any]:
    with ExitStack() as stack:
        bootstrap, broker, s, svc, reader = _start(stack, engine, max_domains=max(1000, domains))
        prod = _spawn(
            produce, bootstrap, s.topic_contexts, s.topic_rewards, events, domains, rate, 1000, 2, 5
        )
        samples: list[list[float]] = []
        start = time.monotonic()
        with progress_bar(total=events, desc="memory", unit="ctx", file=sys.stderr) as bar:
            deadline = start + events / max(rate, 1.0) * 3 + 120
            while len(reader.times) < events and time.monotonic() < deadline:
                reader.read(len(reader.times) + 1, timeout=1.0, bar=bar)
                if samples and time.monotonic() - start - samples[-1][0] < 0.5:
                    continue  # a sample every half second is plenty
                samples.append(
                    [round(time.monotonic() - start, 2), len(reader.times), round(svc.rss_mb(), 1)]
                )
        prod.join(60)
        # Whether the service kept up: RSS under a backlog (pending joins filling) is
        # another figure than RSS in a steady state.
        decided_per_s = reader.rate()
        reader.close()
        svc.stop()
        state_topic = harness.state_topic_traffic(bootstrap, s.topic_state)
    xs = np.asarray([c for _, c, _ in samples], dtype=float)
    ys = np.asarray([m for _, _, m in samples], dtype=float)
    half = xs >= xs.max() / 2 if len(xs) else xs.astype(bool)
    growth = float(np.polyfit(xs[half], ys[half], 1)[0] * 1e6) if half.sum() > 2 else 0.0
    result = {
        "events": events,
        "domains": domains,
        "offered_per_s": rate,
        "decided_per_s": round(decided_per_s, 1),
        "rss_mb": samples,
        "rss_final_mb": float(ys[-1]) if len(ys) else 0.0,
        "rss_max_mb": float(ys.max()) if len(ys) else 0.0,
        "growth_mb_per_million": round(growth, 2),
        "state_topic": state_topic,
        "broker": broker,
        "machine": machine(),
    }
    write_json(out, "memory", result)
    rows = [
        [k, result[k]]
        for k in (
            "events",
            "domains",
            "offered_per_s",
            "decided_per_s",
            "rss_final_mb",
            "rss_max_mb",
            "growth_mb_per_million",
        )
    ] + [[f"state topic {k}", v] for k, v in state_topic.items()]
    write_markdown(
        out, "memory", "# Memory\n\n" + _on(broker) + markdown_table(["", "value"], rows) + "\n"
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys)
    ax.set_xlabel("contexts decided")
    ax.set_ylabel("service RSS (MB)")
    ax.set_title(f"memory: {domains} domains")
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)
    return result
