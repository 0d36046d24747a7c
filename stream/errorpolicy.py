"""What an unexpected exception while processing one message does (KIP-1033's
processing exception handler): ``fail`` re-raises it, ``dead_letter`` lets the caller
dead-letter that message and go on, until errors come faster than the limit allows."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from stream.errors import TooManyProcessingErrors

WINDOW_S = 60.0


class ProcessingErrors:
    """Counts handled errors over a sliding minute; raises when the policy says stop."""

    def __init__(
        self,
        mode: str,
        max_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode = mode
        self.max_per_minute = max_per_minute
        self.total = 0
        self._clock = clock
        self._recent: deque[float] = deque()

    def handle(self, exc: BaseException, count: bool = True) -> None:
        """Re-raise ``exc`` under ``fail``; under ``dead_letter`` count it (unless the
        caller will count what it isolates), and raise :class:`TooManyProcessingErrors`
        once the last minute holds more than the limit."""
        if self.mode != "dead_letter":
            raise exc
        if not count:
            return
        now = self._clock()
        recent = self._recent
        recent.append(now)
        while recent and recent[0] <= now - WINDOW_S:
            recent.popleft()
        self.total += 1
        if len(recent) > self.max_per_minute:
            raise TooManyProcessingErrors(
                f"{len(recent)} processing errors within {WINDOW_S:.0f} s exceed "
                f"RL_MAX_PROCESSING_ERRORS={self.max_per_minute}; last: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
