"""Every RL_METRICS_INTERVAL_S: one metrics event per active domain, and the gauges."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer

from stream.config import Settings
from stream.core.domains import Domains
from stream.core.join import PendingJoins
from stream.observe.memory import process_rss_mb
from stream.observe.metrics import Metrics
from stream.state.checkpointer import Checkpointer

log = logging.getLogger(__name__)


class MetricsReporter:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        domains: Domains,
        joins: PendingJoins,
        checkpointer: Checkpointer,
    ) -> None:
        self.topic = settings.topic_metrics
        self.interval_s = settings.metrics_interval_s
        self.metrics = metrics
        self.domains = domains
        self.joins = joins
        self.checkpointer = checkpointer
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval_s

    def report(self, producer: Producer | None, consumer: Consumer | None) -> list[dict[str, Any]]:
        """Produce one metrics event per active domain and refresh the gauges."""
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
        if producer is not None:
            for ev in events:
                try:
                    producer.produce(self.topic, orjson.dumps(ev), ev["domain"].encode())
                except BufferError:
                    log.warning("producer queue full: metrics event for %s dropped", ev["domain"])
        ck = self.checkpointer
        m.p_pending.set(len(self.joins))
        m.p_rss.set(rss * 1024 * 1024)
        m.p_ckpt_age.set(time.time() - ck.last_at)
        if ck.written:
            m.p_ckpt_duration.set(ck.last_duration_s)
        if consumer is not None:
            self._refresh_lag(consumer)
        return events

    def _refresh_lag(self, consumer: Consumer) -> None:
        try:
            for tp in consumer.position(consumer.assignment()):
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0:
                    lag = max(0, high - tp.offset)
                    self.metrics.p_lag.labels(tp.topic, str(tp.partition)).set(lag)
        except KafkaException as exc:
            log.debug("consumer lag unavailable: %s", exc)
