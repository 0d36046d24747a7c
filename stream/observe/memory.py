"""RSS guard (`RL_MEMORY_LIMIT_MB`, checked every `RL_MEMORY_CLEANUP_INTERVAL` seconds).

Over the limit it trims what can be rebuilt or is only an aid — the feature-hash cache and
the policies' refit histories — and never a pending decision still inside its reward
window, nor the memory of finished joins (bounded by count; without it a re-sent context
would be decided twice and a re-sent reward learned twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from policies.features import FeatureHasher
    from stream.core.domains import Domains
    from stream.core.join import PendingJoins

from stream.sysmem import process_rss_mb

log = logging.getLogger(__name__)


SHED_SHARE = 0.1  # of the pending decisions, oldest first, when trimming was not enough


class MemoryGuard:
    """Calls ``trim`` (rebuildable caches; returns what it freed by kind) when over the
    limit, then ``shed(share)`` (pending decisions; returns how many) if still over."""

    def __init__(
        self,
        limit_mb: float,
        interval_s: float,
        trim: Callable[[], dict[str, int]],
        shed: Callable[[float], int],
        rss_mb: Callable[[], float] = process_rss_mb,
    ) -> None:
        self.limit_mb = limit_mb
        self._trim = trim
        self._shed = shed
        self.interval_s = interval_s
        self._rss_mb = rss_mb
        self._next = time.monotonic() + interval_s
        self.trims = 0
        self.last_rss_mb = 0.0

    def check(self, now: float | None = None) -> bool:
        """Trim when due and over the limit; returns whether it trimmed."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        self._next = now + self.interval_s
        rss = self.last_rss_mb = self._rss_mb()
        if rss <= self.limit_mb:
            return False
        freed = self._trim()
        self.trims += 1
        after = self._rss_mb()
        if after > self.limit_mb:  # caches were not enough: the oldest joins go, learned
            freed["pending_shed"] = self._shed(SHED_SHARE)
            after = self._rss_mb()
        log.warning(
            "RSS %.0f MB over RL_MEMORY_LIMIT_MB=%.0f: trimmed %s (now %.0f MB)",
            rss,
            self.limit_mb,
            freed,
            after,
        )
        return True


def trim(hasher: FeatureHasher, joins: PendingJoins, domains: Domains) -> dict[str, int]:
    """Drop rebuildable structures; pending decisions are kept."""
    freed = {"hash_cache": hasher.clear_cache()}
    rows = 0
    for state in domains.states.values():
        rows += state.baseline.trim()
    freed["history_rows"] = rows
    return freed
