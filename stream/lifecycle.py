"""Stopping: the request to stop, and the deadline the whole shutdown must fit in."""

from __future__ import annotations

import threading
import time


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
