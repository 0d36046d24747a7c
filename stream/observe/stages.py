"""Where the loop's time goes: each turn timed stage by stage, and garbage collections.

The loop calls :meth:`Stages.lap` after each piece of its work (a ``perf_counter`` read
and a dict add); :meth:`Stages.end_turn` files the turn into one Prometheus histogram per
stage (``bandit_loop_stage_seconds``) and, with ``RL_LOOP_TRACE`` set, appends it to a
JSON-lines file: the turn's wall-clock start, each stage's duration in its order, and the
collections that ran in it. ``bench latency`` reads that file to say what the loop was doing
while its slowest decisions waited. Collections are timed through ``gc.callbacks``.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from prometheus_client.core import HistogramMetricFamily

# The loop's stages in the order a turn runs them (a stage may be skipped in a turn).
STAGES = (
    "consume",
    "decode",
    "decide",
    "produce",
    "join",
    "expire",
    "learn",
    "deliver",
    "balance",
    "checkpoint_finish",
    "memory",
    "report",
    "checkpoint_flush",
    "checkpoint_positions",
    "checkpoint_snapshot",
)
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
TRACE_FLUSH_S = 1.0


class StageHistograms:
    """Histograms by one label, bucketed with numpy; a scrape reads a copy under a lock."""

    def __init__(self, name: str, doc: str, label: str, values: tuple[str, ...]) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.bounds = np.asarray(BUCKETS, dtype=np.float64)
        self.index = {v: i for i, v in enumerate(values)}
        self.counts = np.zeros((len(values), len(BUCKETS) + 1), dtype=np.int64)
        self.sums = np.zeros(len(values), dtype=np.float64)
        self._lock = threading.Lock()

    def observe(self, value: str, seconds: float) -> None:
        i = self.index[value]
        b = int(np.searchsorted(self.bounds, seconds, side="left"))
        with self._lock:
            self.counts[i, b] += 1
            self.sums[i] += seconds

    def observe_row(self, seconds: np.ndarray) -> None:
        """One observation per label value (a turn's stages; NaN: the stage did not run)."""
        ran = ~np.isnan(seconds)
        rows = np.flatnonzero(ran)
        cols = np.searchsorted(self.bounds, seconds[ran], side="left")
        with self._lock:
            self.counts[rows, cols] += 1
            self.sums[rows] += seconds[ran]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, sums = self.counts.copy(), self.sums.copy()
        fam = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for value, i in self.index.items():
            cumulative = np.cumsum(counts[i])
            if not cumulative[-1]:
                continue
            buckets = [
                (repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)
            ]
            buckets.append(("+Inf", int(cumulative[-1])))
            fam.add_metric([value], buckets, float(sums[i]))
        yield fam


class Stages:
    """Times the loop's turns (see the module's doc). One per service; the loop's thread
    calls everything but the collectors' scrapes."""

    def __init__(self, trace_path: str | None = None) -> None:
        self.histograms = StageHistograms(
            "bandit_loop_stage_seconds",
            "Time a loop turn spent in each stage",
            "stage",
            STAGES,
        )
        self.gc_pauses = StageHistograms(
            "bandit_gc_pause_seconds",
            "Garbage collection pauses by generation",
            "generation",
            ("0", "1", "2"),
        )
        self._index = {s: i for i, s in enumerate(STAGES)}
        self._turn = np.full(len(STAGES), np.nan)
        self._order: list[int] = []  # the stages in the order this turn ran them
        self._t = self._t0 = time.perf_counter()
        self._wall0 = time.time()
        self._gc_start = 0.0
        self._gcs: list[tuple[int, float, float]] = []  # (generation, wall start, seconds)
        self.trace_path = trace_path
        self._trace: IO[bytes] | None = None
        self._lines: list[bytes] = []
        self._flushed = time.monotonic()

    def start(self) -> None:
        """Time collections and, with a trace path, write the turns from now on."""
        if self.trace_path and self._trace is None:
            Path(self.trace_path).parent.mkdir(parents=True, exist_ok=True)
            self._trace = open(self.trace_path, "ab")  # noqa: SIM115 - open till close()
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._trace is not None:
            self._flush()
            self._trace.close()
            self._trace = None

    def start_turn(self) -> None:
        self._t = self._t0 = time.perf_counter()
        self._wall0 = time.time()

    def lap(self, stage: str) -> None:
        """The time since the last lap (or the turn's start) was ``stage``'s."""
        now = time.perf_counter()
        i = self._index[stage]
        if np.isnan(self._turn[i]):
            self._turn[i] = now - self._t
            self._order.append(i)
        else:
            self._turn[i] += now - self._t
        self._t = now

    def end_turn(self) -> None:
        turn = self._turn
        if self._order:
            self.histograms.observe_row(turn)
        if self._trace is not None:
            self._lines.append(self._row())
            if time.monotonic() - self._flushed > TRACE_FLUSH_S:
                self._flush()
        turn.fill(np.nan)
        self._order.clear()
        self._gcs.clear()
        self.start_turn()  # the next turn starts now, unless it first waits for a message

    def _row(self) -> bytes:
        doc: dict[str, Any] = {
            "t": round(self._wall0, 6),
            "s": [[STAGES[i], round(float(self._turn[i]) * 1e3, 4)] for i in self._order],
        }
        if self._gcs:
            doc["gc"] = [[g, round(t, 6), round(d * 1e3, 4)] for g, t, d in self._gcs]
        return orjson.dumps(doc) + b"\n"

    def _flush(self) -> None:
        if self._trace is not None and self._lines:
            self._trace.write(b"".join(self._lines))
            self._trace.flush()
        self._lines.clear()
        self._flushed = time.monotonic()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_start
        gen = int(info.get("generation", 0))
        self.gc_pauses.observe(str(gen), took)
        if self._trace is not None:
            self._gcs.append((gen, time.time() - took, took))


def read_trace(path: str) -> list[dict[str, Any]]:
    """The turns a trace file holds (see :class:`Stages`), in order."""
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]
