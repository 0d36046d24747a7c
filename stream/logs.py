"""Logging set-up (text or JSON lines) and a rate limiter for per-event warnings."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Throttle:
    """At most one pass per ``key`` per ``every_s`` seconds; a pass reports how many of
    that key were held back since the last one. Keys are bounded (reset past 1,000)."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: hold this one back; else the number held back before it."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return self._held.pop(key, 0)


class RateLimitedLog:
    """Log at most one line per ``key`` per ``every_s`` seconds, with the suppressed count.

    Keeps the per-message path free of logging cost while still telling the operator
    what is being rejected and where.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 5.0) -> None:
        self._logger = logger
        self._throttle = Throttle(every_s)

    def warning(self, key: str, msg: str, *args: object) -> None:
        n = self._throttle.allow(key)
        if n is None:
            return
        suffix = f" (+{n} similar suppressed)" if n else ""
        self._logger.warning(msg + suffix, *args)


class RepeatFilter(logging.Filter):
    """Lets a line through at most once per ``every_s`` (digits ignored when comparing),
    with how many like it were held back: librdkafka repeats a failing connect many
    times a second while a broker is away."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(every_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        n = self._throttle.allow(_DIGITS.sub("#", record.getMessage()))
        if n is None:
            return False
        if n:
            every = self._throttle.every_s
            record.msg = f"{record.msg} (+{n} like it in the last {every:.0f} s)"
        return True


_DIGITS = re.compile(r"\d+")

# librdkafka's own log lines (each client's ``logger``): through Python logging, so
# RL_LOG_FORMAT=json output stays all JSON, and rate-limited.
KAFKA_LOG = logging.getLogger("librdkafka")
KAFKA_LOG.addFilter(RepeatFilter())
