"""`bandit-stream run --profile cpu|memory`: a report written when the service exits.

``cpu`` runs the service under cProfile (deterministic; the loop thread only) and writes
the 60 most expensive functions by cumulative and by own time; ``memory`` traces
allocations with tracemalloc and writes the 40 biggest allocation sites still alive at
exit and the peak. Both slow the service (cProfile ~1.5-2x): use them to find hot spots,
not to measure speed (that is what `bandit-stream bench` is for).
"""

from __future__ import annotations

import cProfile
import io
import logging
import pstats
import tracemalloc
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def run_profiled(kind: str, target: Callable[[], None], out: Path) -> Path:
    """Run ``target`` under the ``kind`` profiler; write the report to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "cpu":
        prof = cProfile.Profile()
        try:
            prof.runcall(target)
        finally:
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf).strip_dirs()
            buf.write("== by cumulative time\n")
            stats.sort_stats("cumulative").print_stats(60)
            buf.write("== by own time\n")
            stats.sort_stats("tottime").print_stats(60)
            out.write_text(buf.getvalue())
            prof.dump_stats(str(out.with_suffix(".pstats")))  # for snakeviz / pstats
            log.info("CPU profile written to %s", out)
        return out
    if kind == "memory":
        tracemalloc.start(25)
        try:
            target()
        finally:
            snap = tracemalloc.take_snapshot()
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            lines = [f"peak traced memory: {peak / 2**20:.1f} MiB", "== largest live sites"]
            for stat in snap.statistics("lineno")[:40]:
                lines.append(str(stat))
            out.write_text("\n".join(lines) + "\n")
            log.info("memory profile written to %s", out)
        return out
    raise ValueError(f"unknown profile kind {kind!r} (cpu or memory)")
