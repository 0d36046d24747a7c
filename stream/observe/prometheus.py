"""Prometheus collectors fed by the loop without a lock or a client call per event."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily


class BatchHistogram:
    """A Prometheus histogram fed a whole batch at once (numpy bucketing under one lock)
    instead of a lock and a Python call per decision."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: above every bound
        self.total = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: list[float] | NDArray[np.float64]) -> None:
        if len(values) == 0:
            return
        v = np.asarray(values, dtype=np.float64)
        idx = np.searchsorted(self.bounds, v, side="left")  # le semantics: v <= bound
        add = np.bincount(idx, minlength=len(self.counts))
        with self._lock:
            self.counts += add
            self.total += float(v.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = self.counts.copy(), self.total
        cumulative = np.cumsum(counts)
        buckets = [
            (repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)
        ]
        buckets.append(("+Inf", int(cumulative[-1])))
        fam = HistogramMetricFamily(self.name, self.doc)
        fam.add_metric([], buckets, total)
        yield fam


class CounterTable:
    """Prometheus counters by label values, kept in a plain dict: the loop adds with no
    lock and no call into prometheus_client per event; a scrape
    reads a copy (``dict(d)`` runs in C under the GIL, so it never sees a half change)."""

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], n: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + n

    def forget(self, first_labels: set[str]) -> None:
        self.values = {k: v for k, v in self.values.items() if k[0] not in first_labels}

    def collect(self) -> Iterator[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.doc, labels=list(self.labelnames))
        for labels, value in dict(self.values).items():
            fam.add_metric(list(labels), value)
        yield fam
