"""SIGTERM / SIGINT: the first asks the service to finish cleanly within its shutdown
timeout (then it exits regardless), the second exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    def stop(self) -> None: ...


def _overdue(timeout_s: float) -> None:
    # Exiting mid-checkpoint is safe: offsets are committed only after a complete write.
    log.error(
        "shutdown did not finish within RL_SHUTDOWN_TIMEOUT_S=%.0f s: exiting now "
        "(the last checkpoint stands)",
        timeout_s,
    )
    logging.shutdown()
    os._exit(1)


@contextmanager
def stop_on_signals(target: Stoppable, timeout_s: float | None = None) -> Iterator[None]:
    """``timeout_s``: after the first signal the process exits (1) at the latest then."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        received.append(signum)
        log.info("%s: finishing the batch, flushing, committing", signal.Signals(signum).name)
        if timeout_s is not None:
            watchdog = threading.Timer(timeout_s, _overdue, (timeout_s,))
            watchdog.daemon = True
            watchdog.start()
        target.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
