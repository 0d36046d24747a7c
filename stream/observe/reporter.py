"""Every RL_METRICS_INTERVAL_S: one metrics event per active domain, and the gauges."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from stream.config import Settings
from stream.core.domains import Domains
from stream.core.join import PendingJoins
from stream.observe.metrics import Metrics
from stream.sysmem import process_rss_mb

log = logging.getLogger(__name__)


class Checkpoints(Protocol):
    """What the reporter reads of the checkpointer."""

    last_at: float  # epoch seconds of the last one written
    written: int
    last_duration_s: float


class MetricsReporter:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        domains: Domains,
        joins: PendingJoins,
        checkpointer: Checkpoints,
    ) -> None:
        self.interval_s = settings.metrics_interval_s
        self.metrics = metrics
        self.domains = domains
        self.joins = joins
        self.checkpointer = checkpointer
        self.last = time.monotonic()

    def due(self, busy: bool = False) -> bool:
        """Time for a report; while ``busy`` (a checkpoint being written beside the loop),
        only once it is a whole interval late, so a stuck write never silences metrics."""
        late = time.monotonic() - self.last - self.interval_s
        return late >= (self.interval_s if busy else 0.0)

    def report(self, lag: Mapping[tuple[str, int], int]) -> list[dict[str, Any]]:
        """One metrics event per active domain (for the metrics topic); the gauges
        refreshed, consumer ``lag`` (topic, partition -> messages behind) among them."""
        self.last = time.monotonic()
        m = self.metrics
        rss = process_rss_mb()
        estimates = {
            name: {
                role: {k: e.as_dict() for k, e in acc.result().items()}
                for role, acc in st.estimates.items()
            }
            for name, st in self.domains.states.items()
            if st.estimates
        }
        events = m.report(time.time(), self.joins.count_by_domain(), rss, estimates)
        ck = self.checkpointer
        m.p_pending.set(len(self.joins))
        m.p_rss.set(rss * 1024 * 1024)
        m.p_ckpt_age.set(time.time() - ck.last_at)
        if ck.written:
            m.p_ckpt_duration.set(ck.last_duration_s)
        for (topic, partition), behind in lag.items():
            m.p_lag.labels(topic, str(partition)).set(behind)
        return events
