"""Per-domain windows for the metrics topic, Prometheus metrics, and threshold alerts.

The loop reports what happens (``decided``, ``reward``, ``expired``, ``rejected``); every
``RL_METRICS_INTERVAL_S`` :meth:`Metrics.report` turns the window into one event per
active domain (schema in docs/events.md) and starts a new window. Prometheus metrics live
in the service's own registry (several services can share a process in tests); label
values are domains, bounded by ``RL_MAX_DOMAINS``, and removed when a domain is released.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PCounter

from policies.estimators import Z95
from stream.config import Settings
from stream.observe.prometheus import BatchHistogram, CounterTable
from stream.observe.stages import Stages

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 20000  # per domain and window: enough for a stable p99
SLOWEST = 10


@dataclass
class RewardStats:
    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, r: float) -> None:
        self.n += 1
        self.total += r
        self.squares += r * r

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def var(self) -> float:
        if self.n < 2:
            return math.nan
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))

    def summary(self) -> dict[str, float | int | None]:
        half = Z95 * math.sqrt(self.var / self.n) if self.n >= 2 else math.nan
        return {
            "n": self.n,
            "mean": _num(self.mean),
            "low": _num(self.mean - half),
            "high": _num(self.mean + half),
        }


def quantiles(groups: list[list[float]], percents: tuple[float, ...]) -> list[list[float]]:
    """Per group, ``np.percentile``'s linear interpolation (nan for an empty group), for
    every group at once: the report needs them for every domain in one turn."""
    sizes = np.fromiter((len(g) for g in groups), np.int64, len(groups))
    out = np.full((len(groups), len(percents)), math.nan)
    if not sizes.sum():
        return out.tolist()
    values = np.fromiter(chain.from_iterable(groups), np.float64, int(sizes.sum()))
    owner = np.repeat(np.arange(len(groups)), sizes)
    values = values[np.lexsort((values, owner))]
    start = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    has = sizes > 0
    pos = (sizes[has, None] - 1) * (np.asarray(percents, dtype=np.float64) / 100.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, sizes[has, None] - 1)
    base = start[has, None]
    a, b = values[base + lo], values[base + hi]
    out[has] = a + (b - a) * (pos - lo)
    return out.tolist()


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 6)


@dataclass
class Window:
    """One domain's counts since the last report."""

    decisions: Counter[str] = field(default_factory=Counter)  # by variant
    joined: int = 0
    expired: int = 0
    expired_learned: int = 0
    late: int = 0
    duplicate: int = 0
    unmatched: int = 0
    rewards: dict[str, RewardStats] = field(default_factory=dict)  # by variant
    latencies: list[float] = field(default_factory=list)
    slow: int = 0  # decisions over RL_LATENCY_THRESHOLD_MS


class Alert:
    """A threshold with hysteresis: raised above it, cleared below ``clear_ratio`` of it."""

    def __init__(self, name: str, threshold: float, clear_ratio: float = 0.8) -> None:
        self.name = name
        self.threshold = threshold
        self.clear_at = threshold * clear_ratio
        self.active = False
        self.value = math.nan
        self.since = 0.0

    def update(self, value: float, now: float) -> bool | None:
        """True when raised now, False when cleared now, None when unchanged."""
        if not math.isfinite(value):
            return None
        self.value = value
        if not self.active and value > self.threshold:
            self.active, self.since = True, now
            return True
        if self.active and value < self.clear_at:
            self.active = False
            return False
        return None


class Metrics:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled_alerts = settings.enable_rl_monitoring
        self.windows: dict[str, Window] = {}
        self.window_start = time.time()
        self.consumed = 0
        self.rejected = 0
        self.slow_count = 0
        self._slowest: list[tuple[float, str, str]] = []  # min-heap of the slowest decisions
        self._turn_latencies_ms: list[float] = []  # for the histogram, see end_turn
        self.alerts = {
            "latency": Alert("latency", settings.latency_threshold_ms),
            "memory": Alert("memory", settings.memory_threshold_mb),
            "error_rate": Alert("error_rate", settings.error_rate_threshold),
        }
        self.last_report: list[dict[str, Any]] = []
        r = self.registry = CollectorRegistry()
        self.stages = Stages(settings.loop_trace or None)
        r.register(self.stages.histograms)
        r.register(self.stages.gc_pauses)
        self.p_decisions = CounterTable("bandit_decisions", "Decisions made", ("domain", "variant"))
        self.p_rewards = CounterTable(
            "bandit_rewards",
            "Rewards by outcome (joined, late, duplicate, unmatched)",
            ("domain", "outcome"),
        )
        self.p_expired = CounterTable(
            "bandit_expired", "Decisions whose reward window closed", ("domain",)
        )
        self.p_rejected = CounterTable(
            "bandit_rejected", "Messages dead-lettered, by error code", ("code",)
        )
        for table in (self.p_decisions, self.p_rewards, self.p_expired, self.p_rejected):
            r.register(table)
        self.p_latency = BatchHistogram(
            "bandit_decision_latency_seconds",
            "Context consumed to decision produced",
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        r.register(self.p_latency)
        self.p_slow = PCounter(
            "bandit_slow_decisions", "Decisions over RL_LATENCY_THRESHOLD_MS", registry=r
        )
        self.p_pending = Gauge("bandit_pending_joins", "Decisions awaiting rewards", registry=r)
        self.p_topic_pauses = PCounter(
            "bandit_topic_pauses",
            "Times a topic's partitions were paused for the other topic to catch up",
            ["topic"],
            registry=r,
        )
        self.p_lag = Gauge(
            "bandit_consumer_lag", "Messages behind the log end", ["topic", "partition"], registry=r
        )
        self.p_ckpt_age = Gauge(
            "bandit_checkpoint_age_seconds", "Since the last checkpoint", registry=r
        )
        self.p_ckpt_duration = Gauge(
            "bandit_checkpoint_duration_seconds",
            "Last checkpoint write, start to commit",
            registry=r,
        )
        self.p_rss = Gauge("bandit_rss_bytes", "Resident set size of the process", registry=r)
        self.p_mean_reward = Gauge(
            "bandit_mean_reward",
            "Mean joined reward over the last metrics window",
            ["domain", "variant"],
            registry=r,
        )
        self.p_alert = Gauge(
            "bandit_alert_active", "1 while an alert is raised", ["alert"], registry=r
        )
        for name in self.alerts:
            self.p_alert.labels(name).set(0)

    # -- events from the loop -----------------------------------------------------------
    def _window(self, domain: str) -> Window:
        w = self.windows.get(domain)
        if w is None:
            w = self.windows[domain] = Window()
        return w

    def decided(
        self, domain: str, variant: str, latencies_ms: list[float], event_ids: list[str]
    ) -> None:
        w = self._window(domain)
        n = len(latencies_ms)
        w.decisions[variant] += n
        self.p_decisions.inc((domain, variant), n)
        room = LATENCY_SAMPLES - len(w.latencies)
        if room > 0:
            w.latencies.extend(latencies_ms[:room])
        self._turn_latencies_ms.extend(latencies_ms)
        limit = self.settings.latency_threshold_ms
        if n and max(latencies_ms) > limit:
            for i, ms in enumerate(latencies_ms):
                if ms > limit:
                    w.slow += 1
                    self._slow(ms, domain, event_ids[i])

    def end_turn(self) -> None:
        """Bucket the turn's decision latencies into the histogram: once per turn, as one
        numpy call per domain cost more than the rest of a lone event's metrics."""
        if self._turn_latencies_ms:
            self.p_latency.observe_many(np.asarray(self._turn_latencies_ms) / 1000.0)
            self._turn_latencies_ms.clear()

    def _slow(self, ms: float, domain: str, event_id: str) -> None:
        self.slow_count += 1
        self.p_slow.inc()
        item = (ms, domain, event_id)
        if len(self._slowest) < SLOWEST:
            heapq.heappush(self._slowest, item)
        elif ms > self._slowest[0][0]:
            heapq.heapreplace(self._slowest, item)

    def slowest(self) -> list[dict[str, Any]]:
        return [
            {"latency_ms": round(ms, 3), "domain": d, "event_id": e}
            for ms, d, e in sorted(self._slowest, reverse=True)
        ]

    def reward(self, domain: str, outcome: str, variant: str = "", value: float = 0.0) -> None:
        w = self._window(domain)
        if outcome == "joined":
            w.joined += 1
            stats = w.rewards.get(variant)
            if stats is None:
                stats = w.rewards[variant] = RewardStats()
            stats.add(value)
        elif outcome == "late":
            w.late += 1
        elif outcome == "duplicate":
            w.duplicate += 1
        else:
            w.unmatched += 1
        self.p_rewards.inc((domain, outcome))

    def expired(self, domain: str, learned: bool) -> None:
        w = self._window(domain)
        w.expired += 1
        w.expired_learned += learned
        self.p_expired.inc((domain,))

    def reject(self, code: str) -> None:
        self.rejected += 1
        self.p_rejected.inc((code,))

    def rejected_by_code(self) -> dict[str, int]:
        """Messages dead-lettered since start, by error code."""
        return {labels[0]: int(n) for labels, n in dict(self.p_rejected.values).items()}

    @property
    def rejected_total(self) -> int:
        """Messages dead-lettered since start."""
        return int(sum(self.p_rejected.values.values()))

    def forget(self, domains: set[str]) -> None:
        """Drop released domains' labels: cardinality stays with the held domains."""
        for table in (self.p_decisions, self.p_rewards, self.p_expired):
            table.forget(domains)
        for labels in list(self.p_mean_reward._metrics):  # noqa: SLF001 - no filter API
            if labels[0] in domains:
                self.p_mean_reward.remove(*labels)
        for d in domains:
            self.windows.pop(d, None)

    # -- the periodic report ------------------------------------------------------------
    def report(
        self,
        now: float,
        pending_by_domain: dict[str, int],
        rss_mb: float,
        estimates: dict[str, dict[str, dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        """One event per domain active in the window; evaluates the alerts; new window."""
        span = max(now - self.window_start, 1e-9)
        every = [ms for w in self.windows.values() for ms in w.latencies]
        p99_all = quantiles([every], (99,))[0][0]
        error_rate = self.rejected / self.consumed if self.consumed else 0.0
        if self.enabled_alerts:
            self._evaluate({"latency": p99_all, "memory": rss_mb, "error_rate": error_rate}, now)
        active = [
            {"alert": a.name, "value": _num(a.value), "threshold": a.threshold, "since": a.since}
            for a in self.alerts.values()
            if a.active
        ]
        events = []
        slowest: dict[str, list[dict[str, Any]]] = {}
        for x in self.slowest():
            slowest.setdefault(x["domain"], []).append(x)
        by_domain = quantiles([w.latencies for w in self.windows.values()], (50, 95, 99))
        for (domain, w), lat in zip(self.windows.items(), by_domain, strict=True):
            ctrl, treat = w.rewards.get("control"), w.rewards.get("treatment")
            diff = None
            if ctrl and treat and ctrl.n >= 2 and treat.n >= 2:
                d = treat.mean - ctrl.mean
                half = Z95 * math.sqrt(treat.var / treat.n + ctrl.var / ctrl.n)
                diff = {"diff": _num(d), "low": _num(d - half), "high": _num(d + half)}
            for variant, stats in w.rewards.items():
                self.p_mean_reward.labels(domain, variant).set(stats.mean)
            decisions = sum(w.decisions.values())
            events.append(
                {
                    "type": "domain_metrics",
                    "domain": domain,
                    "window_start": self.window_start,
                    "window_end": now,
                    "decisions": decisions,
                    "decisions_by_variant": dict(w.decisions),
                    "rewards_joined": w.joined,
                    "expired": w.expired,
                    "expired_learned_default": w.expired_learned,
                    "late_rewards": w.late,
                    "duplicate_rewards": w.duplicate,
                    "unmatched_rewards": w.unmatched,
                    "reward": {v: s.summary() for v, s in w.rewards.items()},
                    "treatment_minus_control": diff,
                    "shadow": estimates.get(domain, {}),
                    "latency_ms": {
                        "p50": _num(float(lat[0])),
                        "p95": _num(float(lat[1])),
                        "p99": _num(float(lat[2])),
                    },
                    "throughput_per_s": round(decisions / span, 3),
                    "pending_joins": pending_by_domain.get(domain, 0),
                    "rss_mb": round(rss_mb, 1),
                    "error_rate": round(error_rate, 6),
                    "alerts": active,
                    "slow_decisions": w.slow,
                    "slowest": slowest.get(domain, []),
                }
            )
        self.windows = {}
        self.window_start = now
        self.consumed = self.rejected = 0
        self.last_report = events
        return events

    def _evaluate(self, values: dict[str, float], now: float) -> None:
        for name, value in values.items():
            alert = self.alerts[name]
            change = alert.update(value, now)
            if change is True:
                self.p_alert.labels(name).set(1)
                log.warning(
                    "ALERT %s raised: %.4g over the threshold %.4g", name, value, alert.threshold
                )
            elif change is False:
                self.p_alert.labels(name).set(0)
                log.warning("alert %s cleared: %.4g", name, value)
