"""Is the broker reachable? A watcher thread beside the loop, so the loop never blocks on it.

Every ``interval_s`` it asks the cluster for metadata with a short timeout; a failure (down,
partitioned, or frozen) marks the broker unreachable, logged once, and ``/readyz`` reports
not-ready until a later request succeeds. librdkafka reconnects by itself meanwhile.
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
    def __init__(self, settings: Settings, interval_s: float = 2.0, timeout_s: float = 3.0) -> None:
        self._admin: AdminClient | None = AdminClient(admin_config(settings))
        self.interval_s = interval_s
        self.timeout_s = timeout_s
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
            try:
                admin.list_topics(timeout=self.timeout_s)
                ok = True
            except Exception:  # noqa: BLE001 - any failure means "not reachable now"
                ok = False
            if ok and not self.reachable:
                log.warning("broker reachable again after %.0f s", time.time() - self.down_since)
            elif not ok and self.reachable:
                self.down_since = time.time()
                self.outages += 1
                log.warning("broker unreachable: not ready until it answers again")
            self.reachable = ok
