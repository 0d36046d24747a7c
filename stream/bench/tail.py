"""What the loop was doing while the slowest decisions waited, from its trace.

The service writes every turn (``RL_LOOP_TRACE``, see :mod:`stream.observe.stages`): its
wall-clock start and its stages' durations in the order they ran, so each stage is an
interval of wall-clock time. A decision waited from its context's send to its decision's
timestamp; the part of that wait each stage's intervals cover is what held it there. What no
turn covers is the loop waiting for a fetch (the broker and the consumer's fetch); from the
decision's timestamp to the reader is the producer and the broker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stream.bench.report import pyplot
from stream.observe.stages import STAGES, read_trace


class Timeline:
    """The loop's stage intervals and collections, sorted by start (turns never overlap)."""

    def __init__(self, turns: list[dict[str, Any]]) -> None:
        starts, ends, kinds = [], [], []
        gcs: list[tuple[int, float, float]] = []
        index = {s: i for i, s in enumerate(STAGES)}
        for turn in turns:
            t = float(turn["t"])
            for name, ms in turn["s"]:
                starts.append(t)
                t += ms / 1e3
                ends.append(t)
                kinds.append(index[name])
            gcs += [(int(g), float(at), float(ms) / 1e3) for g, at, ms in turn.get("gc", [])]
        order = np.argsort(starts, kind="stable")
        self.starts = np.asarray(starts)[order]
        self.ends = np.asarray(ends)[order]
        self.kinds = np.asarray(kinds, dtype=np.int64)[order]
        self.gcs = gcs

    def covered(self, a: float, b: float) -> np.ndarray:
        """Seconds of [a, b] each stage covers (indexed like STAGES)."""
        out = np.zeros(len(STAGES))
        lo = int(np.searchsorted(self.ends, a, side="right"))
        hi = int(np.searchsorted(self.starts, b, side="left"))
        if hi > lo:
            s, e = self.starts[lo:hi], self.ends[lo:hi]
            overlap = np.clip(np.minimum(e, b) - np.maximum(s, a), 0.0, None)
            np.add.at(out, self.kinds[lo:hi], overlap)
        return out

    def gc_in(self, a: float, b: float) -> float:
        return sum(max(0.0, min(at + d, b) - max(at, a)) for _, at, d in self.gcs)

    def marks(self, stage: str, over_s: float = 0.0) -> np.ndarray:
        """Start times of ``stage``'s intervals longer than ``over_s``."""
        i = STAGES.index(stage)
        keep = (self.kinds == i) & (self.ends - self.starts > over_s)
        return self.starts[keep]


def slowest(
    sent: np.ndarray, decided: np.ndarray, read: np.ndarray, trace: Path, share: float = 0.01
) -> dict[str, Any]:
    """Mean ms per cause over the slowest ``share`` of the steady-state decisions (the
    first and last 10% are start-up and drain, as in the latency percentiles)."""
    timeline = Timeline(read_trace(str(trace)))
    a, b = int(len(sent) * 0.1), int(len(sent) * 0.9)
    idx = np.arange(len(sent))[a:b] if b > a else np.arange(len(sent))
    lat = read[idx] - sent[idx]
    ok = np.isfinite(lat) & np.isfinite(decided[idx])
    idx, lat = idx[ok], lat[ok]
    if not len(idx):
        return {"decisions": 0}
    n = max(1, int(round(len(idx) * share)))
    worst = idx[np.argsort(lat)[-n:]]
    by_stage = np.zeros(len(STAGES))
    gc_s = idle = 0.0
    for i in worst:
        start, end = sent[i], decided[i]
        cov = timeline.covered(start, end)
        by_stage += cov
        gc_s += timeline.gc_in(start, end)
        idle += max(0.0, end - start - cov.sum())
    ms = 1000.0 / n
    stages = {s: round(v * ms, 3) for s, v in zip(STAGES, by_stage, strict=True) if v > 0}
    return {
        "decisions": n,
        "latency_ms": round(float(np.mean(read[worst] - sent[worst])) * 1000.0, 3),
        "in_loop_ms": stages,
        "gc_ms": round(gc_s * ms, 3),  # inside the stages above, not beside them
        "waiting_for_a_fetch_ms": round(idle * ms, 3),
        "decided_to_read_ms": round(float(np.mean(read[worst] - decided[worst])) * 1000.0, 3),
    }


def breakdown_table(result: dict[str, Any]) -> list[list[Any]]:
    """Rows (cause, mean ms) of :func:`slowest`'s result, largest first."""
    rows = sorted(result.get("in_loop_ms", {}).items(), key=lambda kv: -kv[1])
    rows += [
        ("(of which garbage collection)", result.get("gc_ms", 0.0)),
        ("waiting for a fetch (broker, consumer)", result.get("waiting_for_a_fetch_ms", 0.0)),
        ("decided -> read (producer, broker)", result.get("decided_to_read_ms", 0.0)),
    ]
    return [[k, v] for k, v in rows]


def plot_timeline(sent: np.ndarray, read: np.ndarray, trace: Path, out: Path, title: str) -> None:
    """Latency over the run, with checkpoints, learning chunks (over 1 ms) and full
    collections marked."""
    timeline = Timeline(read_trace(str(trace)))
    t0 = float(np.nanmin(sent)) if len(sent) else 0.0
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.scatter(sent - t0, (read - sent) * 1000.0, s=2, alpha=0.4, label="decision")
    ax.set_yscale("log")
    marks = (
        ("checkpoint_snapshot", 0.0, "tab:red", "checkpoint"),
        ("learn", 0.001, "tab:green", "learning chunk > 1 ms"),
    )
    for stage, over, color, label in marks:
        for j, x in enumerate(timeline.marks(stage, over) - t0):
            ax.axvline(x, color=color, lw=0.6, alpha=0.5, label=label if j == 0 else None)
    full = [at - t0 for g, at, _ in timeline.gcs if g == 2]
    for j, x in enumerate(full):
        ax.axvline(
            x, color="tab:purple", lw=0.6, ls=":", label="gen-2 collection" if not j else None
        )
    ax.set_xlabel("seconds into the run (context sent)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
