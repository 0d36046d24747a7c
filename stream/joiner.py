"""The reward side of a turn: rewards joined to their decisions (or held for contexts yet
to come), windows closed in stream time, defaults learned for decisions that got no reward.

Nothing here logs per message: it counts, and dead-letters what cannot be learned with its
reason (duplicate, late, unknown).
"""

from __future__ import annotations

import time

from stream.config import Settings
from stream.core.domain import DomainState
from stream.core.domains import Domains
from stream.core.join import Outcome, Pending, PendingJoins
from stream.core.streamtime import StreamTime
from stream.joinedlog import JoinedLog
from stream.kafka.codec import RewardEvent
from stream.kafka.deadletter import Source
from stream.observe.metrics import Metrics
from stream.observe.stats import Stats
from stream.rejections import Rejections


class Joiner:
    def __init__(
        self,
        settings: Settings,
        stats: Stats,
        domains: Domains,
        joins: PendingJoins,
        metrics: Metrics,
        rejections: Rejections,
        clock: StreamTime,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.domains = domains
        self.joins = joins
        self.metrics = metrics
        self.rejections = rejections
        self.clock = clock
        self.joined_log: JoinedLog | None = None  # set while the service runs
        self.now = time.time()  # the wall clock of the turn: learning's cadence runs on it

    def awaiting(self, state: DomainState, pending: Pending) -> None:
        """A decision now waits for its reward."""
        evicted = self.joins.add(pending, state.partition)
        if evicted:
            self.stats.evicted += len(evicted)
            self._learn_default(evicted)

    def claim_early(self, state: DomainState, event_id: str) -> None:
        """The decision's reward came first: join it now (if it is stamped in time)."""
        early = self.joins.early.claim(state.name, event_id, state.partition)
        if early is not None:
            r = RewardEvent(event_id, state.name, early.reward, source=early.source)
            r.record_time = early.timestamp
            self.join(r, early.partition)

    def _joined(self, state: DomainState, pending: Pending, reward: float) -> None:
        state.rewards_joined += 1
        state.reward_sum += reward
        self.domains.learner.add(state, pending, reward, self.now)
        self.stats.rewards_joined += 1
        self.metrics.reward(state.name, "joined", pending.variant, reward)
        if self.joined_log is not None:
            self.joined_log.write(pending, reward, default=False)

    def join(self, r: RewardEvent, partition: int) -> None:
        outcome, pending = self.joins.take(r.domain, r.event_id, r.record_time)
        if outcome is Outcome.JOINED:
            assert pending is not None
            self._joined(self.domains.states[pending.domain], pending, r.reward)
            return
        known = r.domain in self.domains.states  # metrics labels: held domains only
        if outcome is Outcome.DUPLICATE:
            self.stats.duplicate_rewards += 1
            self.rejections.reject(
                "duplicate_reward", f"event {r.event_id!r} already has its reward", r.source
            )
        elif outcome is Outcome.LATE:
            self.stats.late_rewards += 1
            self.rejections.reject(
                "expired_event", f"event {r.event_id!r}'s reward window closed", r.source
            )
        else:
            src = Source.of_reward(r.source, r.event_id, r.domain, r.reward)
            if self._domain_limit_reached(r.domain):
                self.rejections.reject(
                    "domain_limit",
                    f"a reward for {r.domain!r}, a domain without decisions, would exceed "
                    f"RL_MAX_DOMAINS={self.settings.max_domains}",
                    src,
                )
                return
            held, dropped = self.joins.early.hold(
                r.domain, r.event_id, r.reward, r.record_time, partition, src
            )
            for old in dropped:
                self._unknown(old.domain, old.event_id, old.source)
            if held:
                self.stats.early_rewards += 1
                return
            self._unknown(r.domain, r.event_id, src)
            return
        if known:
            self.metrics.reward(r.domain, outcome.value)

    def _domain_limit_reached(self, domain: str) -> bool:
        """Whether holding a reward for ``domain`` (no policy yet) would take the domains
        held, with decisions or rewards only, past RL_MAX_DOMAINS."""
        states = self.domains.states
        if domain in states:
            return False
        early = self.joins.early.domains()
        if domain in early:
            return False
        return len(states) + len(early - states.keys()) >= self.settings.max_domains

    def _unknown(self, domain: str, event_id: str, src: Source | None) -> None:
        """A reward no decision claimed (within RL_REWARD_EARLY_WAIT_S): dead-lettered."""
        self.stats.unknown_rewards += 1
        if domain in self.domains.states:
            self.metrics.reward(domain, "unmatched")
        self.rejections.reject(
            "unknown_event", f"no decision for event {event_id!r} in {domain!r}", src
        )

    def expire(self, now: float) -> None:
        """Close the windows that stream time (or, on a partition read to its end, the
        wall clock) has passed: early rewards whose context cannot come any more are
        dead-lettered, decisions without a reward learn the default."""
        joins, clock = self.joins, self.clock
        if len(joins.early):
            until = clock.contexts_until(joins.early.partitions())
            for early in joins.early.expire(until):
                self._unknown(early.domain, early.event_id, early.source)
        if len(joins):
            expired = joins.expire(clock.rewards_until(joins.partitions()))
            if expired:
                self.stats.expired += len(expired)
                self._learn_default(expired)

    def shed(self, share: float) -> int:
        """Memory pressure: the oldest ``share`` of the pending decisions expire now,
        learned with RL_DEFAULT_REWARD as if their window had closed."""
        shed = self.joins.shed(share)
        self.now = time.time()
        self.stats.evicted += len(shed)
        self._learn_default(shed)
        return len(shed)

    def _learn_default(self, items: list[Pending]) -> None:
        """Decisions whose window closed: learn the default reward, or drop them if 'none'."""
        default = self.settings.default_reward
        for p in items:
            state = self.domains.states.get(p.domain)
            if state is None:
                continue
            state.expired += 1
            self.metrics.expired(p.domain, default is not None)
            if self.joined_log is not None:
                self.joined_log.write(p, default, default=True)
            if default is not None:
                self.domains.learner.add(state, p, default, self.now)
