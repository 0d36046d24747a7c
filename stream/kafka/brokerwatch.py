"""Is the broker reachable? A watcher thread beside the loop, so the loop never blocks on it.

Every ``interval_s`` it asks the cluster for metadata with a short timeout; ``misses``
failures in a row (down, partitioned, or frozen) mark the broker unreachable, logged once,
and ``/readyz`` reports not-ready until a later request succeeds. One late answer is not an
outage: a request can land on a node that is restarting while the rest of the cluster
serves. librdkafka reconnects by itself meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka.admin import AdminClient

from stream.config import Settings
from stream.kafka.clients import admin_config

log = logging.getLogger(__name__)


class BrokerWatch:
    def __init__(
        self,
        settings: Settings,
        interval_s: float = 2.0,
        timeout_s: float = 3.0,
        misses: int = 2,
    ) -> None:
        self._admin: AdminClient | None = AdminClient(admin_config(settings))
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.misses = misses
        self.missed = 0  # failed requests in a row
        self.reachable = True
        self.down_since = 0.0
        self.outages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and close the admin client (its connections go with it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 1.0)
        if not self._thread.is_alive():
            self._admin = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            admin = self._admin
            if admin is None:
                return
            self.check(admin)

    def check(self, admin: AdminClient) -> None:
        """One metadata request; updates ``reachable``."""
        try:
            admin.list_topics(timeout=self.timeout_s)
            ok = True
        except Exception:  # noqa: BLE001 - any failure means "not reachable now"
            ok = False
        if ok:
            if not self.reachable:
                log.warning("broker reachable again after %.0f s", time.time() - self.down_since)
            self.missed = 0
            self.reachable = True
            return
        self.missed += 1
        if self.missed == 1:
            self.down_since = time.time()
        if self.reachable and self.missed >= self.misses:
            self.outages += 1
            self.reachable = False
            log.warning("broker unreachable: not ready until it answers again")
