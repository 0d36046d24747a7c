"""One fetched batch: decode -> decide and emit -> join -> expire -> dead-letter.

Contexts are grouped by domain and decided in one batch per domain; rewards are joined to
the decisions they answer. Nothing here logs per message: it counts, and dead-letters bad
input with its reason (rate-limited warnings aside).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from functools import partial

from confluent_kafka import Message, Producer

from stream.admission import Admission
from stream.config import Settings
from stream.domains import Domains, DomainState, Served
from stream.failpoints import Failpoints
from stream.failpoints import check as failpoint
from stream.join import Outcome, Pending, PendingJoins
from stream.joinedlog import JoinedLog
from stream.kafka.balance import TopicBalance
from stream.kafka.clients import is_benign, producer_max_record_bytes
from stream.kafka.codec import (
    ContextEvent,
    Decision,
    DecodeError,
    Limits,
    RewardEvent,
    decode_context,
    decode_reward,
    encode_decision,
)
from stream.kafka.deadletter import DeadLetters, Source
from stream.kafka.delivery import Delivery
from stream.observe.metrics import Metrics
from stream.observe.stats import Stats
from stream.rejections import Rejections
from stream.state.ownership import Ownership

log = logging.getLogger(__name__)


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        stats: Stats,
        domains: Domains,
        joins: PendingJoins,
        ownership: Ownership,
        balance: TopicBalance,
        metrics: Metrics,
        failpoints: Failpoints | None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.domains = domains
        self.joins = joins
        self.ownership = ownership
        self.balance = balance
        self.metrics = metrics
        self.failpoints = failpoints
        self.limits = Limits.of(settings)
        self.rejections = Rejections(settings, stats, joins, metrics)
        self.admission = Admission(settings, domains, joins, self.rejections)
        # Set while the service runs.
        self.delivery: Delivery | None = None
        self.joined_log: JoinedLog | None = None

    def attach(self, producer: Producer) -> Delivery:
        """Start producing decisions and dead letters with ``producer``."""
        s, rj = self.settings, self.rejections
        self.delivery = Delivery(producer, s.topic_decisions, rj.record_refused, rj.on_retry)
        rj.dead_letters = DeadLetters(
            self.delivery, s.topic_dead_letter, producer_max_record_bytes(s)
        )
        return self.delivery

    def detach(self) -> None:
        self.delivery = self.rejections.dead_letters = None

    def handle(self, msgs: list[Message], now: float, consumed_at: float) -> None:
        """A turn's work on what it fetched: decide and join it, expire what is due, learn
        the buffers that are due, hand deliveries their reports."""
        delivery = self.delivery
        assert delivery is not None
        if msgs:
            self.process(msgs, now, consumed_at)
            self.metrics.end_turn()
        self.expire(now)
        self.stats.rewards_learned += self.domains.flush_due(now)
        delivery.poll()

    def process(self, msgs: list[Message], now: float, consumed_at: float) -> None:
        contexts_topic = self.settings.topic_contexts
        contexts: dict[str, list[ContextEvent]] = defaultdict(list)
        partition_of: dict[str, int] = {}
        rewards: list[tuple[RewardEvent, int]] = []
        applied = self.ownership.already_applied if self.ownership.valid_from else None
        fp, limits, stats = self.failpoints, self.limits, self.stats
        self.metrics.consumed += len(msgs)
        last_context = last_reward = None
        for m in msgs:
            err = m.error()
            if err is not None:
                if is_benign(err):
                    log.debug("consumer: %s", err.str())
                else:
                    log.error("consumer error: %s", err.str())
                continue
            stats.consumed += 1
            topic = m.topic() or ""
            is_context = topic == contexts_topic
            if is_context:
                last_context = m
            else:
                last_reward = m
            try:
                if fp is not None:
                    fp.check("decode")
                decode = decode_context if is_context else decode_reward
                ev = decode(m.value(), m.key(), limits)
                part = m.partition() or 0
                if applied is not None and applied(topic, part, ev.domain, m.offset() or 0):
                    stats.replay_skipped += 1
                    continue
                ev.source = m
                if isinstance(ev, ContextEvent):
                    contexts[ev.domain].append(ev)
                    partition_of[ev.domain] = part
                else:
                    rewards.append((ev, part))
            except DecodeError as exc:
                self.rejections.reject(exc.code, exc.reason, m)
            except Exception as exc:
                self.rejections.internal_error(exc, m)
        self.balance.observe(last_context, last_reward)
        admitted = []
        for domain, events in contexts.items():
            item = self.admission.admit(domain, events, partition_of[domain])
            if item is not None:
                admitted.append(item)
        for (state, _), served in zip(admitted, self._decide(admitted), strict=True):
            for share in served:
                self._emit(state, share, now, consumed_at)
        for r, partition in rewards:
            try:
                if fp is not None:
                    fp.check("join")
                self._join(r, now, partition)
            except Exception as exc:
                self.rejections.internal_error(exc, r.source)

    def _decide(self, admitted: list[tuple[DomainState, list[ContextEvent]]]) -> list[list[Served]]:
        """Every domain's decisions, in one call per policy class; a domain whose decide
        raises is decided event by event (:meth:`_decide_each`)."""
        out: list[list[Served] | None] = [None] * len(admitted)
        together = []
        for i, (state, fresh) in enumerate(admitted):
            try:
                failpoint(self.failpoints, "decide")
                together.append(i)
            except Exception as exc:
                out[i] = self._decide_each(state, fresh, exc)
        try:
            for i, served in zip(
                together, self.domains.decide_many([admitted[i] for i in together]), strict=True
            ):
                out[i] = served
        except Exception:
            for i in together:  # find the domain that raised; the others decide as usual
                state, fresh = admitted[i]
                try:
                    out[i] = self.domains.decide(state, fresh)
                except Exception as exc:
                    out[i] = self._decide_each(state, fresh, exc)
        return [served or [] for served in out]

    def _decide_each(
        self, state: DomainState, events: list[ContextEvent], exc: Exception
    ) -> list[Served]:
        """A batch's decide raised: under ``dead_letter``, decide its events one by one
        and dead-letter those that raise again (under ``fail`` the error propagates).
        Only those count against RL_MAX_PROCESSING_ERRORS, not the batch's error too."""
        self.rejections.errors.handle(exc, count=False)
        self.rejections.log.warning(
            "decide_batch",
            "deciding %d contexts of %r failed (%s: %s): deciding them one by one",
            len(events),
            state.name,
            type(exc).__name__,
            exc,
        )
        out: list[Served] = []
        for ev in events:
            try:
                failpoint(self.failpoints, "decide")
                out.extend(self.domains.decide(state, [ev]))
            except Exception as again:
                self.rejections.internal_error(again, ev.source)
        return out

    def _emit(self, state: DomainState, served: Served, now: float, consumed_at: float) -> None:
        delivery = self.delivery
        assert delivery is not None
        events, encoded, dec = served.events, served.encoded, served.decisions
        variant, policy = served.variant, served.policy
        name, policy_name, version = state.name, policy.name, policy.n_learned
        pmf, rows, probs = dec.pmf.tolist(), dec.row.tolist(), dec.probability.tolist()
        keep_dist = self.joined_log is not None
        deadline = now + self.settings.reward_wait_s
        key = name.encode()
        fp = self.failpoints
        joins, produce, encode = self.joins, delivery.produce, encode_decision
        refused = self.rejections.decision_refused
        # The batch was decided at once: one latency and one timestamp for its decisions.
        latency = (time.perf_counter() - consumed_at) * 1000.0
        stamp = time.time()
        emitted: list[str] = []
        end = 0
        for i, ev in enumerate(events):
            start, cands = end, ev.candidates
            end = start + len(cands)
            chosen = rows[i] - start
            dist = pmf[start:end]
            try:  # everything that may raise before the decision leaves
                if fp is not None:
                    fp.check("emit")
                value = encode(
                    Decision(
                        ev.event_id,
                        name,
                        cands[chosen],
                        probs[i],
                        dict(zip(cands, dist, strict=False)),  # equal lengths: rows start:end
                        policy_name,
                        version,
                        variant,
                        stamp,
                        latency,
                    )
                )
            except Exception as exc:
                self.rejections.internal_error(exc, ev.source)
                continue
            emitted.append(ev.event_id)
            evicted = joins.add(
                Pending(
                    name,
                    ev.event_id,
                    encoded[i],
                    chosen,
                    probs[i],
                    policy_name,
                    variant,
                    now,
                    deadline,
                    tuple(dist) if keep_dist else None,
                    version,
                )
            )
            # Pending first: a decision refused at once (too large) is discarded again.
            produce(value, key, on_refused=partial(refused, ev.source, name, ev.event_id))
            early = joins.claim_early(name, ev.event_id)
            if early is not None:  # its reward came first: join it now
                self._join(RewardEvent(ev.event_id, name, early), now, state.partition)
            if evicted:
                self.stats.evicted += len(evicted)
                self._learn_default(evicted, now)
        self.stats.decisions += len(emitted)
        self.metrics.decided(name, variant, [latency] * len(emitted), emitted)

    def _join(self, r: RewardEvent, now: float, partition: int) -> None:
        outcome, pending = self.joins.take(r.domain, r.event_id)
        if outcome is Outcome.JOINED:
            assert pending is not None
            state = self.domains.states[pending.domain]
            state.rewards_joined += 1
            state.reward_sum += r.reward
            self.domains.add_feedback(state, pending, r.reward, now)
            self.stats.rewards_joined += 1
            self.metrics.reward(state.name, "joined", pending.variant, r.reward)
            if self.joined_log is not None:
                self.joined_log.write(pending, r.reward, default=False)
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
            held, dropped = self.joins.hold_early(
                r.domain, r.event_id, r.reward, now, partition, src
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
        early = self.joins.early_domains()
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
        for early in self.joins.expire_early(now):
            self._unknown(early.domain, early.event_id, early.source)
        expired = self.joins.expire(now)
        if expired:
            self.stats.expired += len(expired)
            self._learn_default(expired, now)

    def shed_pending(self, share: float) -> int:
        """Memory pressure: the oldest ``share`` of the pending decisions expire now,
        learned with RL_DEFAULT_REWARD as if their window had closed."""
        shed = self.joins.shed(share)
        self.stats.evicted += len(shed)
        self._learn_default(shed, time.time())
        return len(shed)

    def _learn_default(self, items: list[Pending], now: float) -> None:
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
                self.domains.add_feedback(state, p, default, now)
