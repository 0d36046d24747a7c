"""The decision loop: consume batch -> decode -> decide / join / learn -> produce -> checkpoint.

One consumer reads contexts and rewards in batches (``consume``, never a poll per
message). Offsets are committed only by a checkpoint, after the state they reflect is
written and every decision of those inputs is acknowledged (see ``Service.checkpoint``).
Nothing in the per-message path logs: it counts.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from policies.features import FeatureHasher
from policies.kernels import warm_up
from stream.codec import (
    ContextEvent,
    DecodeError,
    Limits,
    RewardEvent,
    decode_context,
    decode_reward,
    encode_decision,
)
from stream.config import Settings
from stream.deadletter import DeadLetters, Source, exception_headers
from stream.delivery import Delivery
from stream.domains import Domains, DomainState, Served
from stream.errorpolicy import ProcessingErrors
from stream.failpoints import Failpoints
from stream.failpoints import check as failpoint
from stream.flow import TopicBalance
from stream.health import BrokerWatch
from stream.http import serve
from stream.join import Outcome, Pending, PendingJoins
from stream.joinedlog import JoinedLog
from stream.kafka import (
    consumer_config,
    is_benign,
    producer_config,
    producer_max_record_bytes,
)
from stream.logs import RateLimitedLog
from stream.memory import MemoryGuard, process_rss_mb, release_free_memory
from stream.metrics import Metrics
from stream.ownership import Ownership, check_resume_points
from stream.state import encode_pending, open_store, take_snapshot
from stream.statetopic import StatePublisher

log = logging.getLogger(__name__)

CHECKPOINT_FAILURES_NOT_READY = 3  # consecutive failed writes before /readyz says so


@dataclass
class Stats:
    """Running totals since start (read by the demo, tests and, later, metrics)."""

    turns: int = 0
    consumed: int = 0
    decisions: int = 0
    rewards_joined: int = 0
    rewards_learned: int = 0
    duplicate_rewards: int = 0
    late_rewards: int = 0
    early_rewards: int = 0  # held until their context came (or counted unknown later)
    unknown_rewards: int = 0
    replay_skipped: int = 0  # replayed messages already in a restored domain's state
    expired: int = 0
    evicted: int = 0
    delivery_retries: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class Service:
    """The running service. ``run()`` blocks until ``stop()``; safe to run in a thread."""

    def __init__(
        self, settings: Settings, on_turn: Callable[[Service], None] | None = None
    ) -> None:
        self.settings = settings
        self.on_turn = on_turn
        self.stats = Stats()
        self.hasher = FeatureHasher(settings.feature_dim, seed=settings.seed)
        seed = settings.seed if settings.failpoint_seed is None else settings.failpoint_seed
        self.failpoints = Failpoints.from_spec(settings.failpoints, seed)
        self.errors = ProcessingErrors(settings.on_processing_error, settings.max_processing_errors)
        self.domains = Domains(settings, self.hasher, self.failpoints, self._learn_failed)
        self.joins = PendingJoins(
            settings.max_pending,
            settings.reward_wait_s,
            early_wait_s=settings.reward_early_wait_s,
            max_per_domain=settings.max_pending_per_domain,
        )
        self.balance = TopicBalance(
            settings.topic_contexts, settings.topic_rewards, settings.max_pending
        )
        self.limits = Limits(
            settings.max_message_bytes,
            settings.max_candidates,
            settings.reward_min,
            settings.reward_max,
            settings.max_context_features,
        )
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._stop_by = float("inf")  # monotonic deadline of the shutdown once stopping
        self._closing = False  # the final checkpoint is written; the close's revoke skips it
        self._delivery: Delivery | None = None
        self._dead_letters: DeadLetters | None = None
        # Set when a turn raised: nothing is checkpointed or committed from then on.
        self.failed = False
        self._rejects = RateLimitedLog(log)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._store = open_store(settings.state_dir, settings.checkpoint_keep)
        self.metrics = Metrics(settings)
        self.ownership = Ownership(
            settings, self.domains, self.joins, self.hasher, self._store, self.metrics.forget
        )
        self.metrics_port: int | None = None  # bound port of /metrics, /healthz, /readyz
        self._http: Any = None
        self.broker: BrokerWatch | None = None
        self.joined_log: JoinedLog | None = None
        self._last_turn = time.monotonic()
        self._last_metrics = time.monotonic()
        self._checkpoint_started = 0.0
        # Epoch seconds of the last successful checkpoint (the start until there is one):
        # bandit_checkpoint_age_seconds grows while checkpoints fail.
        self.last_checkpoint_at = time.time()
        self.checkpoint_failures = 0  # consecutive failed checkpoint writes
        self.last_checkpoint_error = ""
        # Whether the shutdown's final checkpoint held everything processed (exit code).
        self.shutdown_clean = False
        self.last_checkpoint_s = 0.0  # its duration, start to SQLite commit
        self._publisher: StatePublisher | None = None
        self._last_checkpoint = time.monotonic()
        self.checkpoints_written = 0
        self.memory = MemoryGuard(settings.memory_limit_mb, settings.memory_cleanup_interval)
        # One background writer: the loop only takes the snapshot; SQLite writes beside it.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._writing: tuple[Future[int], list[TopicPartition], dict[str, Any], bool] | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def stop(self) -> None:
        if not self._stopping.is_set():  # the whole shutdown fits in RL_SHUTDOWN_TIMEOUT_S
            self._stop_by = time.monotonic() + self.settings.shutdown_timeout_s
        self._stopping.set()

    def _time_left(self, wait: bool) -> float:
        """How long a checkpoint may wait on Kafka: RL_SHUTDOWN_TIMEOUT_S on revoke, what
        is left of it once stopping, a short while for a periodic one."""
        budget = self.settings.shutdown_timeout_s if wait else 5.0
        return max(0.0, min(budget, self._stop_by - time.monotonic()))

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        s = self.settings
        warm_up()  # compile the policies' kernels before the first event, not during it
        # Everything imported so far (~190k objects of numpy, scikit-learn, numba, ...)
        # lives forever; moved out of the collector's sight, a full collection scans only
        # the service's own objects: ~80 ms -> a few ms, the loop's longest pause.
        gc.freeze()
        self._producer = Producer(producer_config(s))
        self._publisher = StatePublisher(s)
        self.broker = BrokerWatch(s)
        self.broker.start()
        try:
            self._http, self.metrics_port = serve(
                s.metrics_host,
                s.metrics_port,
                self.metrics.registry,
                self._healthy,
                self._readiness,
            )
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, self.metrics_port)
        except OSError as exc:  # e.g. the port is taken: serve anyway, say so loudly
            log.error(
                "cannot serve /metrics, /healthz, /readyz on %s:%d: %s",
                s.metrics_host,
                s.metrics_port,
                exc,
            )
        self._delivery = Delivery(
            self._producer, s.topic_decisions, self._record_refused, self._on_retry
        )
        self._dead_letters = DeadLetters(
            self._delivery, s.topic_dead_letter, producer_max_record_bytes(s)
        )
        if s.joined_log:
            self.joined_log = JoinedLog(s.joined_log, s.feature_dim, self._delivery)
        self._consumer = Consumer(consumer_config(s))
        self._consumer.subscribe(
            [s.topic_contexts, s.topic_rewards],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "consuming %s and %s as group %s from %s",
            s.topic_contexts,
            s.topic_rewards,
            s.kafka_group_id,
            s.kafka_bootstrap_servers,
        )
        try:
            while not self._stopping.is_set():
                self.turn()
        except BaseException:
            self._abort()
            raise
        self._shutdown()

    def turn(self) -> None:
        """One pass: consume a batch, process it, expire, learn, deliver, checkpoint when due."""
        assert self._consumer is not None and self._producer is not None
        s = self.settings
        # Whatever is already fetched, without waiting to fill a batch (consume() would
        # block until batch_size arrive or the timeout passes: at 3,000 contexts/s that
        # alone was 170 ms of latency); only when nothing is there, wait for the first.
        msgs = self._consumer.consume(num_messages=s.batch_size, timeout=0)
        if not msgs:
            msgs = self._consumer.consume(num_messages=1, timeout=s.poll_timeout_s)
            if msgs:
                msgs += self._consumer.consume(num_messages=s.batch_size - 1, timeout=0)
        consumed_at = time.perf_counter()
        now = time.time()
        if msgs:
            self._process(msgs, now, consumed_at)
            self.metrics.end_turn()
        self._expire(now)
        paused = self.balance.update(self._consumer, len(self.joins), self.joins.n_early, len(msgs))
        if paused is not None:
            self.metrics.p_topic_pauses.labels(paused).inc()
        self.stats.rewards_learned += self.domains.flush_due(now)
        assert self._delivery is not None
        self._delivery.poll()
        self._finish_write(block=False)
        self.memory.check(self)
        self._last_turn = time.monotonic()
        if self._last_turn - self._last_metrics >= s.metrics_interval_s:
            self.report_metrics()
        if (
            time.monotonic() - self._last_checkpoint >= s.checkpoint_interval_s
            and self._writing is None  # never wait for a slow write: start when it is done
            and (self.broker is None or self.broker.reachable)  # an outage: nothing to flush
        ):
            self.checkpoint(wait=False)
        self.stats.turns += 1
        if self.on_turn is not None:
            self.on_turn(self)

    def _shutdown(self) -> None:
        """Finish: learn buffered rewards, flush decisions, checkpoint, commit offsets."""
        consumer = self._consumer
        assert consumer is not None
        self.shutdown_clean = self.checkpoint() is not None
        if not self.shutdown_clean:
            log.error("the final checkpoint failed: the last successful one stands")
        self._closing = True
        consumer.close()
        self._release()
        log.info(
            "stopped after %d decisions, %d rewards joined",
            self.stats.decisions,
            self.stats.rewards_joined,
        )

    def _abort(self) -> None:
        """After an unexpected exception: close without a checkpoint or a commit.

        The turn that raised may have decided, joined or learned part of its batch, so
        the state in memory is ahead of any offset that could be committed for it. The
        last checkpoint stands and a restart replays from it exactly once, as after
        kill -9. A write already in flight reflects input processed before the turn: it
        may finish, but its offsets are not committed (SQLite holds them)."""
        self.failed = True
        log.error("stopping after an unexpected error: the last checkpoint stands")
        if self._writing is not None:
            self._writing[0].exception()
            self._writing = None
        if self._producer is not None:  # decisions already made reach their consumers
            self._producer.flush(min(5.0, self.settings.shutdown_timeout_s))
        if self._consumer is not None:
            try:
                self._consumer.close()  # leaves the group; the revoke does no checkpoint
            except Exception as exc:
                log.warning("closing the consumer after the failure: %s", exc)
        self._release()

    def _release(self) -> None:
        """Release every client, thread and file the service holds."""
        self._writer.shutdown(wait=True)
        if self._publisher is not None:
            self._publisher.close(min(5.0, self._time_left(True)))
        if self._http is not None:
            self._http.shutdown()
        if self.joined_log is not None:
            self.joined_log.close()
        if self.broker is not None:
            self.broker.stop()
        self._store.close()
        # librdkafka's clients close when their objects go: drop them now, or a caller
        # that keeps the stopped service (the demo, for its summary) holds their
        # connections until it exits, and they log disconnects when the broker goes.
        self._consumer = self._producer = None
        self._delivery = self._publisher = None
        self._dead_letters = None
        self.ready.clear()

    # -- processing ---------------------------------------------------------------------
    def _process(self, msgs: list[Message], now: float, consumed_at: float) -> None:
        s = self.settings
        contexts: dict[str, list[ContextEvent]] = defaultdict(list)
        partition_of: dict[str, int] = {}
        rewards: list[tuple[RewardEvent, int]] = []
        replaying = bool(self.ownership.valid_from)
        fp = self.failpoints
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
            topic, part, offset = m.topic() or "", m.partition() or 0, m.offset() or 0
            self.stats.consumed += 1
            try:
                if fp is not None:
                    fp.check("decode")
                if topic == s.topic_contexts:
                    last_context = m
                    ev = decode_context(m.value(), m.key(), self.limits)
                    if replaying and self.ownership.already_applied(topic, part, ev.domain, offset):
                        self.stats.replay_skipped += 1
                        continue
                    ev.source = m
                    contexts[ev.domain].append(ev)
                    partition_of[ev.domain] = part
                else:
                    last_reward = m
                    r = decode_reward(m.value(), m.key(), self.limits)
                    if replaying and self.ownership.already_applied(topic, part, r.domain, offset):
                        self.stats.replay_skipped += 1
                        continue
                    r.source = m
                    rewards.append((r, part))
            except DecodeError as exc:
                self._reject(exc.code, exc.reason, m)
            except Exception as exc:
                self._internal_error(exc, m)
        self.balance.observe(last_context, last_reward)
        for domain, events in contexts.items():
            self._decide(domain, events, now, consumed_at, partition_of[domain])
        for r, partition in rewards:
            try:
                if fp is not None:
                    fp.check("join")
                self._join(r, now, partition)
            except Exception as exc:
                self._internal_error(exc, r.source)

    def _decide(
        self,
        domain: str,
        events: list[ContextEvent],
        now: float,
        consumed_at: float,
        partition: int,
    ) -> None:
        state = self.domains.get_or_create(domain, partition)
        if state is None:
            for ev in events:
                self._reject(
                    "domain_limit",
                    f"domain {domain!r} would exceed RL_MAX_DOMAINS={self.settings.max_domains}",
                    ev.source,
                )
            return
        fresh: list[ContextEvent] = []
        seen: set[str] = set()
        max_actions = self.settings.max_actions
        for ev in events:
            if ev.event_id in seen or (domain, ev.event_id) in self.joins:
                self._reject(
                    "duplicate_event", f"event_id {ev.event_id!r} is already pending", ev.source
                )
                continue
            if self.joins.was_joined(domain, ev.event_id):
                self._reject(
                    "duplicate_event", f"event_id {ev.event_id!r} was already joined", ev.source
                )
                continue
            new = [c for c in ev.candidates if c not in state.actions]
            if new and len(state.actions) + len(new) > max_actions:
                self._reject(
                    "action_limit",
                    f"domain {domain!r} would exceed RL_MAX_ACTIONS={max_actions} distinct actions",
                    ev.source,
                )
                continue
            state.actions.update(new)
            seen.add(ev.event_id)
            fresh.append(ev)
        if not fresh:
            return
        try:
            failpoint(self.failpoints, "decide")
            served = self.domains.decide(state, fresh)
        except Exception as exc:
            served = self._decide_each(state, fresh, exc)
        for share in served:
            self._emit(state, share, now, consumed_at)

    def _decide_each(
        self, state: DomainState, events: list[ContextEvent], exc: Exception
    ) -> list[Served]:
        """A batch's decide raised: under ``dead_letter``, decide its events one by one
        and dead-letter those that raise again (under ``fail`` the error propagates).
        Only those count against RL_MAX_PROCESSING_ERRORS, not the batch's error too."""
        self.errors.handle(exc, count=False)
        self._rejects.warning(
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
                self._internal_error(again, ev.source)
        return out

    def _emit(self, state: DomainState, served: Served, now: float, consumed_at: float) -> None:
        s = self.settings
        delivery = self._delivery
        assert delivery is not None
        events, encoded, dec = served.events, served.encoded, served.decisions
        variant, policy = served.variant, served.policy
        pmf = dec.pmf.tolist()
        rows = dec.row.tolist()
        probs = dec.probability.tolist()
        version = policy.n_learned
        latencies: list[float] = []
        emitted: list[str] = []
        keep_dist = self.joined_log is not None
        deadline = now + s.reward_wait_s
        key = state.name.encode()
        fp = self.failpoints
        start = 0
        for i, ev in enumerate(events):
            k = len(ev.candidates)
            chosen = rows[i] - start
            lat = (time.perf_counter() - consumed_at) * 1000.0
            action = ev.candidates[chosen]
            dist = tuple(pmf[start : start + k]) if keep_dist else None
            try:  # everything that may raise before the decision leaves
                if fp is not None:
                    fp.check("emit")
                value = encode_decision(
                    event_id=ev.event_id,
                    domain=state.name,
                    action=action,
                    probability=probs[i],
                    probabilities=dict(zip(ev.candidates, pmf[start : start + k], strict=True)),
                    policy=policy.name,
                    policy_version=version,
                    variant=variant,
                    timestamp=time.time(),
                    latency_ms=lat,
                )
            except Exception as exc:
                self._internal_error(exc, ev.source)
                continue
            finally:
                start += k
            latencies.append(lat)
            emitted.append(ev.event_id)
            evicted = self.joins.add(
                Pending(
                    state.name,
                    ev.event_id,
                    encoded[i],
                    chosen,
                    probs[i],
                    policy.name,
                    variant,
                    now,
                    deadline,
                    dist,
                    version,
                )
            )
            # Pending first: a decision refused at once (too large) is discarded again.
            refused = partial(self._decision_refused, ev.source, state.name, ev.event_id)
            delivery.produce(value, key, on_refused=refused)
            early = self.joins.claim_early(state.name, ev.event_id)
            if early is not None:  # its reward came first: join it now
                self._join(RewardEvent(ev.event_id, state.name, early), now, state.partition)
            if evicted:
                self.stats.evicted += len(evicted)
                self._learn_default(evicted, now)
        self.stats.decisions += len(emitted)
        self.metrics.decided(state.name, variant, latencies, emitted)

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
            self._reject(
                "duplicate_reward", f"event {r.event_id!r} already has its reward", r.source
            )
        elif outcome is Outcome.LATE:
            self.stats.late_rewards += 1
            self._reject("expired_event", f"event {r.event_id!r}'s reward window closed", r.source)
        else:
            src = Source.of_reward(r.source, r.event_id, r.domain, r.reward)
            if self._domain_limit_reached(r.domain):
                self._reject(
                    "domain_limit",
                    f"a reward for {r.domain!r}, a domain without decisions, would exceed "
                    f"RL_MAX_DOMAINS={self.settings.max_domains}",
                    src,
                )
                return
            held, dropped = self.joins.hold_early(
                r.domain, r.event_id, r.reward, now, partition, src
            )
            for d, e, s in dropped:
                self._unknown(d, e, s)
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
        self._reject("unknown_event", f"no decision for event {event_id!r} in {domain!r}", src)

    def _expire(self, now: float) -> None:
        for d, e, src in self.joins.expire_early(now):
            self._unknown(d, e, src)
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

    def _on_retry(self, err: KafkaError) -> None:
        self.stats.delivery_retries += 1
        self._rejects.warning(
            "delivery", "delivery failed after librdkafka's retries (%s); producing again", err
        )

    def _reject(
        self,
        code: str,
        reason: str,
        src: Message | Source | None,
        exc: BaseException | None = None,
    ) -> None:
        """Dead-letter a message (original bytes and key, the reason in its headers)."""
        self.stats.rejected[code] += 1
        self.metrics.reject(code)
        if isinstance(src, Message):
            src = Source.of(src)
        where = "?" if src is None else f"{src.topic}[{src.partition}]@{src.offset}"
        self._rejects.warning(code, "dead-lettered %s: %s (%s)", where, reason, code)
        if src is not None and self._dead_letters is not None:
            extra = None if exc is None else exception_headers(exc)
            self._dead_letters.send(code, reason, src, extra)

    def _internal_error(self, exc: Exception, src: Message | Source | None) -> None:
        """An unexpected exception while processing one message: re-raised under
        RL_ON_PROCESSING_ERROR=fail, else the message is dead-lettered (internal_error)."""
        self.errors.handle(exc)
        self._reject("internal_error", f"{type(exc).__name__}: {exc}", src, exc)

    def _learn_failed(
        self, exc: Exception, state: DomainState, items: list[tuple[Pending, float]]
    ) -> None:
        """A domain's learn raised: its rewards are dead-lettered, re-encoded from the
        joins (the raw reward messages are not kept), with source offset -1."""
        self.errors.handle(exc)
        for pending, reward in items:
            value = orjson.dumps(
                {"event_id": pending.event_id, "domain": pending.domain, "reward": reward}
            )
            src = Source(
                self.settings.topic_rewards,
                state.partition,
                -1,
                int(time.time() * 1000),
                pending.domain.encode(),
                value,
            )
            reason = f"learning failed: {type(exc).__name__}: {exc}"
            self._reject("internal_error", reason, src, exc)

    def _decision_refused(
        self, src: Message | Source | None, domain: str, event_id: str, err: KafkaError
    ) -> None:
        """The decisions topic refused a decision (e.g. too large): its context is
        dead-lettered and the decision forgotten (no reward can come for it)."""
        self.joins.discard(domain, event_id)
        self._reject(
            "undeliverable",
            f"{self.settings.topic_decisions} refused the decision for {event_id!r}: {err.str()}",
            src,
        )

    def _record_refused(self, err: KafkaError) -> None:
        """A joined-log record was refused (too large for its topic): counted, logged."""
        self.stats.rejected["joined_log_refused"] += 1
        self._rejects.warning("joined_log", "joined-log record refused: %s", err.str())

    # -- state ----------------------------------------------------------------------
    def checkpoint(self, wait: bool = True) -> int | None:
        """Checkpoint the state, publish what changed, then commit the offsets it reflects.

        1. on revoke and shutdown, learn every buffered reward (a periodic checkpoint
           stores the buffers instead, so it never stalls the loop with learning);
        2. flush the producer: every decision of a processed context is acknowledged;
        3. read the consumer's position on each assigned partition: everything before it
           is now fully reflected in the state;
        4. snapshot the state (copy-on-write: no arrays copied) in the loop thread;
        5. in the background writer (``wait=False``: the loop carries on meanwhile): write
           policies, pending joins and those offsets in one SQLite transaction, then
           produce the changed domains and the partition markers to the state topic;
        6. only when the SQLite transaction commits, commit the same offsets to Kafka
           (SQLite stays authoritative). With ``wait=True`` (revoke, shutdown) all of it
           happens now.

        Returns the version written (``wait=True``), else None.
        """
        consumer, producer = self._consumer, self._producer
        if consumer is None or producer is None:
            return None
        self._finish_write(block=True)  # one write at a time, in order
        self._last_checkpoint = time.monotonic()
        if self.joined_log is not None:
            self.joined_log.flush()
        self._checkpoint_started = time.perf_counter()
        if wait:  # periodic ones checkpoint the reward buffers instead of learning them now
            self.stats.rewards_learned += self.domains.flush_due(time.time(), force=True)
        # A periodic checkpoint gives up quickly (the next one retries); revoke and
        # shutdown wait up to RL_SHUTDOWN_TIMEOUT_S for every decision to be acknowledged.
        assert self._delivery is not None
        remaining = self._delivery.flush(self._time_left(wait), lambda: self._stop_by)
        if remaining:
            log.error(
                "%d decisions unacknowledged: checkpoint skipped, their inputs will be "
                "decided again after a restart",
                remaining,
            )
            return None
        try:
            positions = consumer.position(consumer.assignment())
        except KafkaException as exc:
            log.warning("cannot read positions for a checkpoint: %s", exc)
            return None
        own = self.ownership
        own.advance({(tp.topic, tp.partition): tp.offset for tp in positions})
        changed, markers, ahead = own.publish_plan()
        signatures = {
            d: self.domains.signature(self.domains.states[d])
            for d in changed
            if d in self.domains.states
        }
        snap = take_snapshot(self.domains, self.joins, self.hasher, own.offsets)
        snap.meta["valid_from"] = own.valid_from_meta()
        commit = [
            TopicPartition(tp.topic, tp.partition, own.offsets[(tp.topic, tp.partition)])
            for tp in positions
            if own.offsets.get((tp.topic, tp.partition), -1) >= 0
        ]
        records = {d: (p, ahead[d]) for d, p in changed.items() if d in ahead}
        store, publisher = self._store, self._publisher
        timeout = self._time_left(True)
        fp = self.failpoints

        def write() -> int:
            failpoint(fp, "checkpoint_write")
            version = store.write(encode_pending(snap))
            if publisher is not None and markers:
                try:
                    failpoint(fp, "state_publish")
                    publisher.publish(snap, records, markers, timeout)
                except Exception:  # the local checkpoint stands; republished next time
                    log.exception("state topic publish of checkpoint %d failed", version)
                    signatures.clear()
            return version

        self._writing = (self._writer.submit(write), commit, signatures, wait)
        return self._finish_write(block=True) if wait else None

    def _finish_write(self, block: bool) -> int | None:
        """Once the background write has committed, commit its offsets to Kafka."""
        if self._writing is None or not (block or self._writing[0].done()):
            return None
        future, commit, signatures, sync = self._writing
        self._writing = None
        future.exception()  # wait: until the write is over its arrays must stay untouched
        self.domains.write_in_flight = False
        try:
            version = future.result()
        except Exception as exc:
            self.checkpoint_failures += 1
            self.last_checkpoint_error = f"{type(exc).__name__}: {exc}"
            log.exception(
                "checkpoint write failed (%d in a row); offsets stay uncommitted",
                self.checkpoint_failures,
            )
            return None
        self.checkpoint_failures = 0
        self.checkpoints_written += 1
        release_free_memory()  # the snapshot's clones and buffers are gone now
        self.last_checkpoint_at = time.time()
        self.last_checkpoint_s = time.perf_counter() - self._checkpoint_started
        self.ownership.mark_published(signatures)
        consumer = self._consumer
        if commit and consumer is not None:
            failpoint(self.failpoints, "commit")
            try:
                # SQLite is authoritative; the Kafka copy need not hold up the loop
                # (synchronous only on revoke and shutdown, when it is the last word).
                if sync:
                    consumer.commit(offsets=commit, asynchronous=False)
                else:
                    consumer.commit(offsets=commit, asynchronous=True)
            except KafkaException as exc:
                log.warning("commit after checkpoint %d failed: %s", version, exc.args[0].str())
        return version

    # -- metrics and health -------------------------------------------------------------
    def report_metrics(self) -> list[dict[str, Any]]:
        """Produce one metrics event per active domain and refresh the gauges."""
        self._last_metrics = time.monotonic()
        m = self.metrics
        rss = process_rss_mb()
        estimates = {
            name: {
                role: {k: e.as_dict() for k, e in acc.result().items()}
                for role, acc in st.estimates.items()
            }
            for name, st in self.domains.states.items()
            if st.estimates
        }
        events = m.report(time.time(), self.joins.count_by_domain(), rss, estimates)
        producer = self._producer
        if producer is not None:
            for ev in events:
                try:
                    producer.produce(
                        self.settings.topic_metrics, orjson.dumps(ev), ev["domain"].encode()
                    )
                except BufferError:
                    log.warning("producer queue full: metrics event for %s dropped", ev["domain"])
        m.p_pending.set(len(self.joins))
        m.p_rss.set(rss * 1024 * 1024)
        m.p_ckpt_age.set(time.time() - self.last_checkpoint_at)
        if self.checkpoints_written:
            m.p_ckpt_duration.set(self.last_checkpoint_s)
        self._refresh_lag()
        return events

    def _refresh_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            for tp in consumer.position(consumer.assignment()):
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0:
                    lag = max(0, high - tp.offset)
                    self.metrics.p_lag.labels(tp.topic, str(tp.partition)).set(lag)
        except KafkaException as exc:
            log.debug("consumer lag unavailable: %s", exc)

    def _healthy(self) -> tuple[bool, str]:
        quiet = time.monotonic() - self._last_turn
        limit = max(10.0, 5 * self.settings.poll_timeout_s)
        if quiet > limit:
            return False, f"the loop has not turned for {quiet:.1f} s\n"
        return True, "ok\n"

    def _readiness(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping\n"
        if not self.ready.is_set():
            return False, "waiting for partitions and their state\n"
        if self.broker is not None and not self.broker.reachable:
            return False, "the broker is unreachable\n"
        if self.checkpoint_failures >= CHECKPOINT_FAILURES_NOT_READY:
            return False, (
                f"{self.checkpoint_failures} checkpoints in a row failed "
                f"(last: {self.last_checkpoint_error})\n"
            )
        return True, f"ready: partitions {sorted(self.ownership.held)}\n"

    # -- partitions ---------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Hold exactly these partitions: release the others' domains, restore the new
        # ones from the newest checkpoint (local or state topic), then resume each
        # partition where its state stands, so the tail is replayed into it exactly once.
        s = self.settings
        numbers = {
            tp.partition for tp in partitions if tp.topic in (s.topic_contexts, s.topic_rewards)
        }
        self.ownership.assign(numbers)
        self.balance.reset()
        resumed = 0
        for tp in partitions:
            off = self.ownership.offsets.get((tp.topic, tp.partition))
            if off is not None:
                tp.offset = off
                resumed += 1
        check_resume_points(consumer, partitions, self.ownership.offsets, s.topic_state)
        consumer.assign(partitions)
        log.info(
            "assigned %s (%d resumed from a checkpoint; %d domains held)",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions),
            resumed,
            len(self.domains),
        )
        self.ready.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Checkpoint now; the domains stay in memory until the next assignment says
        # which partitions went elsewhere. If the checkpoint fails, the in-memory state
        # is ahead of every stored one: drop it all, so it is restored exactly.
        log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        self.ready.clear()
        self.balance.reset()
        if self.failed:  # closing after an unexpected error: nothing is checkpointed
            return
        failpoint(self.failpoints, "revoke")
        if self._closing:  # shutdown's checkpoint already holds everything processed
            return
        if self.checkpoint() is None and self.ownership.held:
            log.error("checkpoint on revoke failed: releasing every partition's state")
            self.ownership.release_all()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group moved on without us (session timeout, e.g. a broker outage): another
        # member may own these partitions already, so nothing is checkpointed or committed
        # for them. Their in-memory state is ahead of the last checkpoint and is dropped;
        # if they come back they are restored and the tail replayed exactly once.
        log.warning(
            "lost %s (session expired): dropping their state until they are reassigned",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions),
        )
        self.ready.clear()
        self.balance.reset()
        # Not waiting for an in-flight write: in an outage its state-topic publish can
        # take its whole timeout, and the loop must keep turning. Its snapshot keeps its
        # own references (copy-on-write), so releasing the live state now is safe.
        self.ownership.release({tp.partition for tp in partitions} & self.ownership.held)
