"""/healthz and /readyz verdicts: is the loop turning, should traffic be routed here."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from stream.observe.http import serve

log = logging.getLogger(__name__)


class Checkpoints(Protocol):
    """What the probes read of the checkpointer."""

    failures: int
    last_error: str

    @property
    def failing(self) -> bool: ...


class Holdings(Protocol):
    held: set[int]  # the input partitions held


class Broker(Protocol):
    reachable: bool


class Group(Protocol):
    stall: str  # why the group has not assigned anything (empty: nothing to say)


class Probes:
    def __init__(
        self,
        poll_timeout_s: float,
        ready: threading.Event,
        stopping: threading.Event,
        checkpointer: Checkpoints,
        ownership: Holdings,
        group: Group | None = None,
    ) -> None:
        self.limit_s = max(10.0, 5 * poll_timeout_s)
        self.ready = ready
        self.stopping = stopping
        self.checkpointer = checkpointer
        self.ownership = ownership
        self.group = group
        self.broker: Broker | None = None
        self.last_turn = time.monotonic()
        self.failed = ""  # why the service is stopping after an error (healthz fails)

    def turned(self) -> None:
        self.last_turn = time.monotonic()

    def healthy(self) -> tuple[bool, str]:
        if self.failed:
            return False, f"stopping after an error: {self.failed}\n"
        quiet = time.monotonic() - self.last_turn
        if quiet > self.limit_s:
            return False, f"the loop has not turned for {quiet:.1f} s\n"
        return True, "ok\n"

    def readiness(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "stopping\n"
        if not self.ready.is_set():
            if self.group is not None and self.group.stall:
                return False, f"no partitions assigned: {self.group.stall}\n"
            return False, "waiting for partitions and their state\n"
        if self.broker is not None and not self.broker.reachable:
            return False, "the broker is unreachable\n"
        ck = self.checkpointer
        if ck.failing:
            return False, f"{ck.failures} checkpoints in a row failed (last: {ck.last_error})\n"
        return True, f"ready: partitions {sorted(self.ownership.held)}\n"

    def serve(self, host: str, port: int, registry: CollectorRegistry) -> tuple[Any, int | None]:
        """/metrics, /healthz and /readyz over HTTP: (the server, its bound port)."""
        try:
            server, bound = serve(host, port, registry, self.healthy, self.readiness)
        except OSError as exc:  # e.g. the port is taken: run anyway, say so loudly
            log.error("cannot serve /metrics, /healthz, /readyz on %s:%d: %s", host, port, exc)
            return None, None
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return server, bound
