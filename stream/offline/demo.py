"""`bandit-stream demo`: embedded broker + service + simulated traffic, live, then a summary."""

from __future__ import annotations

import multiprocessing as mp
import queue
import sys
import tempfile
import time
from typing import Any

from confluent_kafka.admin import AdminClient

from stream.config import Settings, load_settings
from stream.kafka.clients import admin_config
from stream.kafka.embedded import FAST_CLIENT_SETTINGS, EmbeddedBroker
from stream.kafka.topics import ensure_topics
from stream.offline.traffic import DOMAINS, simulate
from stream.service import Service
from stream.signals import stop_on_signals


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


class _Progress:
    """Prints one live line (a rewritten line on a terminal, a line every 2 s otherwise)."""

    def __init__(self, reports: Any) -> None:
        self.reports = reports
        self.latest: dict[str, Any] | None = None
        self.done = False
        self._last_print = 0.0
        self._tty = sys.stdout.isatty()
        self._since = (time.monotonic(), 0)  # (time, decisions) at the last printed line

    def __call__(self, service: Service) -> None:
        try:
            while True:
                kind, summary = self.reports.get_nowait()
                self.latest = summary
                self.done = self.done or kind == "done"
        except queue.Empty:
            pass
        now = time.monotonic()
        if now - self._last_print < (0.25 if self._tty else 2.0):
            return
        self._last_print = now
        st = service.stats
        # The rate since the last line, not since start-up (spawning the simulator and the
        # service's warm-up would drag a cumulative average down for the whole demo).
        t0, d0 = self._since
        rate = (st.decisions - d0) / max(now - t0, 1e-9)
        self._since = (now, st.decisions)
        parts = [f"{st.decisions:>7} decided  {rate:7.0f} ev/s  pending {len(service.joins):>5}"]
        if self.latest:
            for name, t in self.latest["tallies"].items():
                recent = t["recent"][-500:]
                parts.append(f"{name} reward {_mean(recent):.3f}" if recent else f"{name} reward -")
        line = "  |  ".join(parts)
        if self._tty:
            print("\r" + line.ljust(120), end="", flush=True)
        else:
            print(line, flush=True)


def _summary(service: Service, latest: dict[str, Any] | None) -> str:
    rows = [
        (
            "domain",
            "decisions",
            "rewards joined",
            "mean reward",
            "last 25%",
            "uniform random",
            "best fixed action",
        )
    ]
    tallies = (latest or {}).get("tallies", {})
    for name, state in service.domains.states.items():
        t = tallies.get(name, {})
        n = max(t.get("decisions", 0), 1)
        fixed = t.get("fixed_sum", {})
        best = max(fixed, key=fixed.get) if fixed else "-"
        recent = t.get("recent", [])
        rows.append(
            (
                name,
                str(state.decisions),
                str(state.rewards_joined),
                f"{state.reward_sum / max(state.rewards_joined, 1):.3f}",
                f"{_mean(recent[-max(len(recent) // 4, 1) :]):.3f}" if recent else "-",
                f"{t.get('uniform_sum', 0.0) / n:.3f}",
                f"{fixed[best] / n:.3f} ({best})" if fixed else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(events: int, rate: float, seed: int, base: Settings | None = None) -> int:
    """Run the demo to completion (or Ctrl-C); returns the exit code."""
    with EmbeddedBroker() as broker:
        overrides = {
            **FAST_CLIENT_SETTINGS,
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            "reward_wait_s": 30.0,
            "state_dir": tempfile.mkdtemp(prefix="bandit-demo-"),
        }
        settings = load_settings(**overrides) if base is None else base.model_copy(update=overrides)
        ensure_topics(settings, AdminClient(admin_config(settings)))
        print(
            f"broker on {broker.bootstrap_servers}; simulating {events} events at {rate:.0f}/s "
            f"over {', '.join(d.name for d in DOMAINS)}  (Ctrl-C to stop)"
        )
        ctx = mp.get_context("spawn")  # librdkafka threads already run here: never fork
        reports: Any = ctx.Queue()
        stop_sim = ctx.Event()
        sim = ctx.Process(
            target=simulate,
            daemon=True,
            args=(
                broker.bootstrap_servers,
                settings.topic_contexts,
                settings.topic_rewards,
                settings.topic_decisions,
                events,
                rate,
                seed,
                2.0,
                reports,
                stop_sim,
            ),
        )
        progress = _Progress(reports)

        def on_turn(service: Service) -> None:
            # Traffic starts once the service consumes: on a fresh machine compiling the
            # policies' kernels takes a while, and contexts sent meanwhile would all be
            # decided, untrained, in one backlog before any reward came back.
            if sim.pid is None and service.ready.is_set():
                sim.start()
            progress(service)
            # Stop once every reward the simulator sent has been joined (then learned on exit).
            latest = progress.latest
            if progress.done and latest and service.stats.rewards_joined >= latest["rewards_sent"]:
                service.stop()

        service = Service(settings, on_turn=on_turn)
        try:
            with stop_on_signals(service):
                service.run()
        finally:
            stop_sim.set()
            if sim.pid is not None:
                sim.join(5)
                if sim.is_alive():
                    sim.terminate()
        print()
        print(_summary(service, progress.latest))
        st = service.stats
        print(
            f"\n{st.decisions} decisions, {st.rewards_joined} rewards joined, "
            f"{st.rewards_learned} learned, {service.metrics.rejected_total} messages skipped"
        )
    return 0
