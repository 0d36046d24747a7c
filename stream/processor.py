"""One fetched batch: decode -> decide and emit -> join -> expire -> dead-letter.

Contexts are grouped by domain and decided in one batch per domain; rewards are joined to
the decisions they answer. Nothing here logs per message: it counts, and dead-letters bad
input with its reason (rate-limited warnings aside).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message, Producer

from stream.config import Settings
from stream.core.admission import Admission
from stream.core.domain import DomainState
from stream.core.domains import Served
from stream.core.join import Pending
from stream.core.streamtime import StreamTime
from stream.errors import KafkaClientError
from stream.failpoints import Failpoints
from stream.failpoints import check as failpoint
from stream.joiner import Joiner
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
from stream.kafka.deadletter import DeadLetters
from stream.kafka.decisionlog import context_header
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
        ownership: Ownership,
        balance: TopicBalance,
        metrics: Metrics,
        failpoints: Failpoints | None,
        clock: StreamTime,
    ) -> None:
        """Processes batches for the partitions ``ownership`` holds (its domains, joins
        and decision log)."""
        self.settings = settings
        self.stats = stats
        domains, joins = self.domains, self.joins = ownership.domains, ownership.joins
        self.ownership = ownership
        self.balance = balance
        self.metrics = metrics
        self.failpoints = failpoints
        self.clock = clock
        assert ownership.decision_log is not None
        self.decision_log = ownership.decision_log
        self.limits = Limits.of(settings)
        self.rejections = Rejections(settings, stats, joins, metrics)
        self.admission = Admission(settings, domains, joins, self.rejections)
        self.joiner = Joiner(settings, stats, domains, joins, metrics, self.rejections, clock)
        # Set while the service runs.
        self.delivery: Delivery | None = None
        # Checked before a batch's decisions leave: raises when the process must not
        # publish any more (it was paused past its group session), see Service.
        self.may_publish: Callable[[], None] | None = None

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

    def handle(
        self, msgs: list[Message], now: float, consumed_at: float, fetched_at: float | None = None
    ) -> int:
        """A turn's work on what it fetched (asked for at wall-clock ``fetched_at``): decide
        and join it, expire what is due, learn the buffers that are due, hand deliveries
        their reports. Returns how many records it read (end-of-partition events aside)."""
        delivery = self.delivery
        assert delivery is not None
        self._may_publish()
        self.joiner.now = now
        read = 0
        if msgs:
            read = self.process(msgs, now, consumed_at, now if fetched_at is None else fetched_at)
            self.metrics.end_turn()
        self.joiner.expire(now)
        self.stats.rewards_learned += self.domains.learner.learn(now)
        self._may_publish()  # records given up on by librdkafka are produced again here
        delivery.poll()
        return read

    def _may_publish(self) -> None:
        if self.may_publish is not None:
            self.may_publish()

    def process(
        self, msgs: list[Message], now: float, consumed_at: float, fetched_at: float
    ) -> int:
        contexts_topic = self.settings.topic_contexts
        contexts: dict[str, list[ContextEvent]] = defaultdict(list)
        partition_of: dict[str, int] = {}
        rewards: list[tuple[RewardEvent, int]] = []
        applied = self.ownership.already_applied if self.ownership.valid_from else None
        fp, limits, stats, clock = self.failpoints, self.limits, self.stats, self.clock
        grace = clock.grace_s
        last_context = last_reward = None
        ctx_last: dict[int, Message] = {}  # each partition's last record read
        rew_last: dict[int, Message] = {}
        read = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    is_context, part = m.topic() == contexts_topic, m.partition() or 0
                    clock.consumed(is_context, part, m.offset() or 0)
                    clock.seen_end(is_context, part, fetched_at)
                elif err.fatal():
                    raise KafkaClientError(f"fatal consumer error: {err.str()}", err.code())
                elif is_benign(err):
                    log.debug("consumer: %s", err.str())
                else:
                    log.error("consumer error: %s", err.str())
                continue
            read += 1
            topic = m.topic() or ""
            is_context = topic == contexts_topic
            part = m.partition() or 0
            kind, stamp = m.timestamp()
            # A clock ahead counts as now: one bad record must not close every window.
            at = now if kind == TIMESTAMP_NOT_AVAILABLE else min(stamp / 1000.0, now + grace)
            clock.read(is_context, part, at)
            if is_context:
                last_context = ctx_last[part] = m
            else:
                last_reward = rew_last[part] = m
            try:
                if fp is not None:
                    fp.check("decode")
                decode = decode_context if is_context else decode_reward
                ev = decode(m.value(), m.key(), limits)
                if applied is not None and applied(topic, part, ev.domain, m.offset() or 0):
                    stats.replay_skipped += 1
                    continue
                ev.source = m
                ev.record_time = at
                if isinstance(ev, ContextEvent):
                    contexts[ev.domain].append(ev)
                    partition_of[ev.domain] = part
                else:
                    rewards.append((ev, part))
            except DecodeError as exc:
                self.rejections.reject(exc.code, exc.reason, m)
            except Exception as exc:
                self.rejections.internal_error(exc, m)
        for is_context, last in ((True, ctx_last), (False, rew_last)):
            for part, m in last.items():
                clock.consumed(is_context, part, (m.offset() or 0) + 1)
        stats.consumed += read
        self.metrics.consumed += read
        self.balance.observe(last_context, last_reward)
        admitted = []
        for domain, events in contexts.items():
            item = self.admission.admit(domain, events, partition_of[domain])
            if item is None:
                continue
            state, fresh = item
            if self.ownership.replays:  # after a restore: contexts decided before it
                fresh = self._published(state, fresh)
            if fresh:
                admitted.append((state, fresh))
        decided = self._decide(admitted)
        for (state, _), served in zip(admitted, decided, strict=True):
            for share in served:
                self._emit(state, share, consumed_at)
        for r, partition in rewards:
            try:
                if fp is not None:
                    fp.check("join")
                self.joiner.join(r, partition)
            except Exception as exc:
                self.rejections.internal_error(exc, r.source)
        return read

    def _published(self, state: DomainState, events: list[ContextEvent]) -> list[ContextEvent]:
        """Contexts whose decision is already on the decisions topic (a replay after a
        restore) await their reward with that decision, exactly as it was served; the
        others are returned, to be decided."""
        fresh = []
        for ev in events:
            dec = self.ownership.published_decision(state.partition, ev.source.offset() or 0)
            if dec is None or not self._served_again(state, ev, dec):
                fresh.append(ev)
        return fresh

    def _served_again(self, state: DomainState, ev: ContextEvent, dec: Decision) -> bool:
        """Await ``ev``'s reward with its published decision ``dec``; False when ``dec``
        does not fit ``ev`` (another context under a reused event id): decide it anew."""
        cands = ev.candidates
        if (dec.domain, dec.event_id) != (state.name, ev.event_id) or (
            dec.action not in cands or list(dec.probabilities) != cands
        ):
            return False
        encoded = self.domains.hasher.encode(ev.context, cands, ev.candidate_features, state.index)
        dist = tuple(dec.probabilities.values())
        at = ev.record_time
        pending = Pending(
            state.name,
            ev.event_id,
            encoded,
            cands.index(dec.action),
            dec.probability,
            dec.policy,
            dec.variant,
            at,
            at + self.settings.reward_wait_s,
            dist if self.joiner.joined_log is not None else None,
            dec.policy_version,
        )
        state.decisions += 1
        self.stats.republished += 1
        self.joiner.awaiting(state, pending)
        self.joiner.claim_early(state, ev.event_id)
        return True

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

    def _emit(self, state: DomainState, served: Served, consumed_at: float) -> None:
        delivery = self.delivery
        assert delivery is not None
        events, encoded, dec = served.events, served.encoded, served.decisions
        variant, policy = served.variant, served.policy
        name, policy_name, version = state.name, policy.name, policy.n_learned
        pmf, rows, probs = dec.pmf.tolist(), dec.row.tolist(), dec.probability.tolist()
        keep_dist = self.joiner.joined_log is not None
        wait = self.settings.reward_wait_s
        key = name.encode()
        fp, may_publish = self.failpoints, self._may_publish
        part = state.partition
        partition = self.decision_log.partition_of(part)
        produce, encode = delivery.produce, encode_decision
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
            at = ev.record_time
            pending = Pending(
                name,
                ev.event_id,
                encoded[i],
                chosen,
                probs[i],
                policy_name,
                variant,
                at,
                at + wait,
                tuple(dist) if keep_dist else None,
                version,
            )
            # Pending first: a decision refused at once (too large) is discarded again.
            self.joiner.awaiting(state, pending)
            may_publish()  # a freeze past the session may have ended anywhere before here
            produce(
                value,
                key,
                headers=context_header(part, ev.source.offset() or 0),
                partition=partition,
                on_refused=partial(refused, ev.source, name, ev.event_id),
            )
            self.joiner.claim_early(state, ev.event_id)
        self.stats.decisions += len(emitted)
        self.metrics.decided(name, variant, [latency] * len(emitted), emitted)
