"""Logging set-up (text or JSON lines) and a rate limiter for per-event warnings."""

from __future__ import annotations

import logging
import re
import sys
import time
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


class RateLimitedLog:
    """Log at most one line per ``key`` per ``every_s`` seconds, with the suppressed count.

    Keeps the per-message path free of logging cost while still telling the operator
    what is being rejected and where.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 5.0) -> None:
        self._logger = logger
        self._every = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 1000:  # keys are reason codes; bound anyway
            self._last.clear()
        suffix = f" (+{n} similar suppressed)" if n else ""
        self._logger.warning(msg + suffix, *args)


class RepeatFilter(logging.Filter):
    """Lets a line through at most once per ``every_s`` (digits ignored when comparing),
    with how many like it were held back: librdkafka repeats a failing connect many
    times a second while a broker is away."""

    def __init__(self, every_s: float = 10.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self._every = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = _DIGITS.sub("#", record.getMessage())
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        n = self._held.pop(key, 0)
        if n:
            record.msg = f"{record.msg} (+{n} like it in the last {self._every:.0f} s)"
        return True


_DIGITS = re.compile(r"\d+")

# librdkafka's own log lines (each client's ``logger``): through Python logging, so
# RL_LOG_FORMAT=json output stays all JSON, and rate-limited.
KAFKA_LOG = logging.getLogger("librdkafka")
KAFKA_LOG.addFilter(RepeatFilter())
