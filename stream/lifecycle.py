"""Stopping: the request to stop, and the deadline the whole shutdown must fit in."""

from __future__ import annotations

import gc
import sys
import threading
import time

# The loop takes the GIL back this soon from a background thread (the checkpoint writer);
# Python's 5 ms default let a write hold a decision that long at every switch.
SWITCH_INTERVAL_S = 0.0005


def settle_process() -> None:
    """After start-up, before the first event: what is imported by now lives forever, so
    it leaves the collector's sight (a full collection then scans only the service's own
    objects, the loop's longest pause), and the GIL switches often."""
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)


class Stopping(threading.Event):
    """Set by ``stop()``; from then on ``by`` is RL_SHUTDOWN_TIMEOUT_S away."""

    def __init__(self, shutdown_timeout_s: float) -> None:
        super().__init__()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.by = float("inf")  # monotonic deadline of the shutdown once stopping

    def stop(self) -> None:
        if not self.is_set():
            self.by = time.monotonic() + self.shutdown_timeout_s
        self.set()

    def time_left(self, wait: bool, periodic_s: float = 5.0) -> float:
        """How long a checkpoint may wait on Kafka: RL_SHUTDOWN_TIMEOUT_S on revoke, what
        is left of it once stopping, a short while for a periodic one."""
        budget = self.shutdown_timeout_s if wait else periodic_s
        return max(0.0, min(budget, self.by - time.monotonic()))


class Paused(Exception):  # noqa: N818 - a state, not a failure of the code
    """The process was frozen for longer than its group session allows: another member
    may own its partitions, so it must not publish anything for them."""


class PauseWatch:
    """Tells a frozen process (SIGSTOP, a suspended VM) from a running one.

    A thread ticks every ``TICK_S``; a gap of ``limit_s`` between ticks, or since the last
    one when the loop asks, means the whole process stood still that long. The loop asks
    before each decision leaves (:meth:`check`), so whichever thread wakes first sees it.
    """

    TICK_S = 0.1

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.last = time.monotonic()
        self.frozen_s = 0.0  # the longest gap seen and not yet acknowledged
        self.pauses = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pause-watch", daemon=True)

    def start(self) -> None:
        self.last = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.TICK_S):
            now = time.monotonic()
            if now - self.last > self.limit_s:
                self.frozen_s = max(self.frozen_s, now - self.last)
            self.last = now

    def running(self) -> bool:
        """Whether no freeze past the limit is pending (unlike :meth:`check`, it leaves
        one to be acknowledged by the loop)."""
        return not self.frozen_s and time.monotonic() - self.last <= self.limit_s

    def check(self) -> None:
        """Raise :class:`Paused` once after the process stood still past the limit."""
        gap = time.monotonic() - self.last
        if gap > self.limit_s:
            self.frozen_s = max(self.frozen_s, gap)
            self.last = time.monotonic()
        if self.frozen_s:
            frozen, self.frozen_s = self.frozen_s, 0.0
            self.pauses += 1
            raise Paused(f"the process stood still for {frozen:.1f} s")
