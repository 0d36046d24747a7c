"""One counting system, fed by outcomes: the running totals (:class:`Stats`) and the
metrics (:class:`Metrics`) are both counted here, from what the core returned, and by no
one else. Dead letters count themselves by code (``Metrics.reject``) as they are sent."""

from __future__ import annotations

from stream.core.outcomes import (
    DUPLICATE_REWARD,
    EXPIRED_EVENT,
    UNKNOWN_EVENT,
    Decided,
    Expired,
    Held,
    Joined,
    Outcome,
    Refused,
    Republished,
)
from stream.observe.metrics import Metrics
from stream.observe.stats import Stats

# A refused reward's label on the rewards metric (for a domain held here).
REWARD_LABELS = {DUPLICATE_REWARD: "duplicate", EXPIRED_EVENT: "late", UNKNOWN_EVENT: "unmatched"}


class Tally:
    def __init__(self, stats: Stats, metrics: Metrics) -> None:
        self.stats = stats
        self.metrics = metrics

    def count(self, o: Outcome) -> None:
        """Every outcome but a new decision (see :meth:`decided`)."""
        stats = self.stats
        if isinstance(o, Joined):
            stats.rewards_joined += 1
            self.metrics.reward(o.state.name, "joined", o.pending.variant, o.reward)
        elif isinstance(o, Refused):
            if o.code == DUPLICATE_REWARD:
                stats.duplicate_rewards += 1
            elif o.code == EXPIRED_EVENT:
                stats.late_rewards += 1
            elif o.code == UNKNOWN_EVENT:
                stats.unknown_rewards += 1
            label = REWARD_LABELS.get(o.code)
            if label is not None and o.domain is not None:
                self.metrics.reward(o.domain, label)
        elif isinstance(o, Expired):
            if o.evicted:
                stats.evicted += 1
            else:
                stats.expired += 1
            self.metrics.expired(o.state.name, o.reward is not None)
        elif isinstance(o, Held):
            stats.early_rewards += 1
        elif isinstance(o, Republished):
            stats.republished += 1

    def decided(self, published: list[Decided], latency_ms: float) -> None:
        """Decisions published together (one domain's variant), ``latency_ms`` each."""
        if not published:
            return
        first = published[0]
        self.stats.decisions += len(published)
        self.metrics.decided(
            first.state.name,
            first.pending.variant,
            [latency_ms] * len(published),
            [d.event.event_id for d in published],
        )

    def learned(self, n: int) -> None:
        self.stats.rewards_learned += n
