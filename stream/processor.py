"""One fetched batch, in Kafka's terms: decode its records, hand the contexts and rewards to
the core (:class:`~stream.core.engine.Engine`), publish the decisions it makes, and
translate its other outcomes into dead letters, joined-log lines and counts.

Nothing here decides, joins or changes a domain: that is the core's. Nothing here logs per
message either: it counts, and dead-letters bad input with its reason (rate-limited
warnings aside).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message, Producer

from stream.config import Settings
from stream.core.domain import DomainState
from stream.core.engine import Engine
from stream.core.events import ContextEvent, Decision, RewardEvent
from stream.core.outcomes import Decided, Expired, Failed, Joined, Outcome, Refused
from stream.errors import KafkaClientError
from stream.failpoints import Failpoints
from stream.joinedlog import JoinedLog
from stream.kafka.balance import TopicBalance
from stream.kafka.clients import is_benign, producer_max_record_bytes
from stream.kafka.codec import DecodeError, Limits, decode_context, decode_reward, encode_decision
from stream.kafka.deadletter import DeadLetters, Source
from stream.kafka.decisionlog import context_header
from stream.kafka.delivery import Delivery
from stream.observe.tally import Tally
from stream.rejections import Rejections
from stream.state.ownership import Ownership

log = logging.getLogger(__name__)


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        ownership: Ownership,
        balance: TopicBalance,
        tally: Tally,
        failpoints: Failpoints | None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.ownership = ownership
        self.balance = balance
        self.tally = tally
        self.failpoints = failpoints
        assert ownership.decision_log is not None
        self.decision_log = ownership.decision_log
        self.limits = Limits.of(settings)
        engine.keep = self.keep  # a held reward keeps a small re-encoding, not its message
        self.rejections = Rejections(
            settings, tally.stats, tally.metrics, engine.errors, engine.undeliverable
        )
        # Set while the service runs.
        self.delivery: Delivery | None = None
        self.joined_log: JoinedLog | None = None
        # Checked before each decision leaves: raises when the process must not publish
        # any more (it was paused past its group session), see Service.
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
        self.engine.now = now
        read = 0
        lap = self.tally.metrics.stages.lap
        if msgs:
            read = self.process(msgs, now, consumed_at, now if fetched_at is None else fetched_at)
            self.tally.metrics.end_turn()
        self.translate(self.engine.expire())
        lap("expire")
        self.tally.learned(self.engine.learn(now))
        lap("learn")
        self._may_publish()  # records given up on by librdkafka are produced again here
        delivery.poll()
        lap("deliver")
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
        fp, limits, stats = self.failpoints, self.limits, self.tally.stats
        clock = self.engine.clock
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
        self.tally.metrics.consumed += read
        self.balance.observe(last_context, last_reward)
        published = self._published if self.ownership.replays else None
        batches = [(d, evs, partition_of[d]) for d, evs in contexts.items()]
        lap = self.tally.metrics.stages.lap
        lap("decode")
        decided = self.engine.decide(batches, published)
        lap("decide")
        self._publish(decided, consumed_at)
        lap("produce")
        for r, partition in rewards:
            try:
                if fp is not None:
                    fp.check("join")
                self.translate(self.engine.reward(r, partition))
            except Exception as exc:
                self.rejections.internal_error(exc, r.source)
        lap("join")
        return read

    def _published(self, state: DomainState, ev: ContextEvent) -> Decision | None:
        """The decision already on the decisions topic for a replayed context's record."""
        return self.ownership.published_decision(state.partition, ev.source.offset() or 0)

    def _publish(self, outcomes: list[Outcome], consumed_at: float) -> None:
        """Publish the decisions among ``outcomes`` (a domain variant's run at a time), and
        translate the rest."""
        delivery = self.delivery
        assert delivery is not None
        fp, may_publish, tally = self.failpoints, self._may_publish, self.tally
        produce, encode = delivery.produce, encode_decision
        refused = self.rejections.decision_refused
        partition_of = self.decision_log.partition_of
        # Decided at once: one latency for a batch's decisions.
        latency = (time.perf_counter() - consumed_at) * 1000.0
        run: list[Decided] = []
        for o in outcomes:
            if not isinstance(o, Decided):
                self.translate([o])
                continue
            if run and (run[0].state is not o.state or run[0].pending.variant != o.pending.variant):
                tally.decided(run, latency)
                run = []
            ev, name = o.event, o.state.name
            try:  # everything that may raise before the decision leaves
                if fp is not None:
                    fp.check("emit")
                o.decision.latency_ms = latency
                value = encode(o.decision)
            except Exception as exc:
                self.engine.withdraw(o)
                self.rejections.internal_error(exc, ev.source)
                continue
            may_publish()  # a freeze past the session may have ended anywhere before here
            part = o.state.partition
            produce(
                value,
                name.encode(),
                headers=context_header(part, ev.source.offset() or 0),
                partition=partition_of(part),
                on_refused=partial(refused, ev.source, name, ev.event_id),
            )
            run.append(o)
            self.translate(self.engine.claim_early(o))
        tally.decided(run, latency)

    def translate(self, outcomes: list[Outcome]) -> None:
        """Count every outcome; dead-letter refusals and failures; log finished joins."""
        for o in outcomes:
            self.tally.count(o)
            if isinstance(o, Refused):
                self.rejections.reject(o.code, o.reason, o.source)
            elif isinstance(o, Failed):
                self.rejections.dead_letter_failure(o.error, o.source)
            elif self.joined_log is not None:
                if isinstance(o, Joined):
                    self.joined_log.write(o.pending, o.reward, default=False)
                elif isinstance(o, Expired):
                    self.joined_log.write(o.pending, o.reward, default=True)

    def keep(self, r: RewardEvent) -> Source:
        """What a held early reward keeps of its message: its place and a re-encoding, not
        its raw bytes (see Source.of_reward)."""
        return Source.of_reward(r.source, r.event_id, r.domain, r.reward)
