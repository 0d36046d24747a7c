"""The service: wiring, the loop (``run`` / ``turn``) and shutdown.

One consumer reads contexts and rewards in batches (``consume``, never a poll per
message); the :class:`BatchProcessor` decides, joins and dead-letters; offsets are
committed only by the :class:`Checkpointer`, after the state they reflect is written and
every decision of those inputs is acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from confluent_kafka import Consumer, Producer

from policies.features import FeatureHasher
from policies.kernels import warm_up
from stream.config import Settings
from stream.core.engine import Engine
from stream.failpoints import Failpoints
from stream.joinedlog import JoinedLog
from stream.kafka.balance import TopicBalance
from stream.kafka.brokerwatch import BrokerWatch
from stream.kafka.clients import consumer_config, fetch_batch, producer_config
from stream.kafka.decisionlog import DecisionLog
from stream.kafka.endwatch import EndWatch
from stream.kafka.lag import consumer_lag, send_metrics
from stream.lifecycle import Paused, Stopping, settle_process
from stream.observe.memory import MemoryGuard, trim
from stream.observe.metrics import Metrics
from stream.observe.probes import Probes
from stream.observe.reporter import MetricsReporter
from stream.observe.stats import Stats
from stream.observe.tally import Tally
from stream.processor import BatchProcessor
from stream.state.checkpointer import Checkpointer, Clients, Outcome, Skipped, Written
from stream.state.membership import Membership
from stream.state.ownership import Ownership
from stream.state.publisher import StatePublisher
from stream.state.rebalance import Rebalance
from stream.state.snapshot import open_store

log = logging.getLogger(__name__)


class Service:
    """The running service. ``run()`` blocks until ``stop()``; safe to run in a thread."""

    def __init__(
        self, settings: Settings, on_turn: Callable[[Service], None] | None = None
    ) -> None:
        s = self.settings = settings
        self.on_turn = on_turn
        self.stats = Stats()
        self.hasher = FeatureHasher(s.feature_dim, seed=s.seed)
        seed = s.seed if s.failpoint_seed is None else s.failpoint_seed
        fp = self.failpoints = Failpoints.from_spec(s.failpoints, seed)
        e = self.engine = Engine(s, self.hasher, fp)
        self.domains, self.joins, self.clock = e.domains, e.joins, e.clock
        self.balance = TopicBalance(s.topic_contexts, s.topic_rewards, s.max_pending, s.batch_size)
        self.ready = threading.Event()
        self._stopping = Stopping(s.shutdown_timeout_s)
        # Set when a turn raised: nothing is checkpointed or committed from then on.
        self.failed = False
        self.shutdown_clean = False  # the final checkpoint held everything (exit code)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._store = open_store(s.state_dir, s.checkpoint_keep)
        self.metrics = Metrics(s)
        self.tally = Tally(self.stats, self.metrics)
        self.decision_log = DecisionLog(s)
        parts = (self.domains, self.joins, self.hasher, self._store)
        self.ownership = Ownership(s, *parts, self._released, self.decision_log)
        self.processor = BatchProcessor(s, e, self.ownership, self.balance, self.tally, fp)
        e.learner.on_learn_error = self.processor.rejections.learn_failed
        self.checkpointer = Checkpointer(self.ownership, fp, self.tally.learned, self.clock)
        self.stages = self.metrics.stages
        self.checkpointer.lap = self.stages.lap
        self.rebalance = Rebalance(s, self.ownership, self.balance, self.checkpoint, self.ready, fp)
        ckpt, own, reg = self.checkpointer, self.ownership, self.metrics.registry
        m = self.membership = Membership(s, self.rebalance, own, ckpt, self.ready, reg)
        self.probes = Probes(s.poll_timeout_s, self.ready, self._stopping, ckpt, own, m)
        self.reporter = MetricsReporter(s, self.metrics, self.domains, self.joins, ckpt)
        self.memory = MemoryGuard(
            s.memory_limit_mb,
            s.memory_cleanup_interval,
            partial(trim, self.hasher, self.joins, self.domains),
            self._shed,
        )
        self.ends = EndWatch(s, self.decision_log)
        self.metrics_port: int | None = None  # bound port of /metrics, /healthz, /readyz
        self._http: Any = None
        self.broker: BrokerWatch | None = None
        self.joined_log: JoinedLog | None = None

    def _shed(self, share: float) -> int:
        shed = self.engine.shed(share)
        self.processor.translate(shed)
        return len(shed)

    def _released(self, names: set[str], partitions: set[int]) -> None:
        self.metrics.forget(names)
        self.clock.forget(partitions)

    def stop(self) -> None:
        self._stopping.stop()

    def run(self) -> None:
        s = self.settings
        warm_up()  # compile the policies' kernels before the first event, not during it
        settle_process()
        self._producer = Producer(producer_config(s))
        self.broker = self.probes.broker = BrokerWatch(s)
        self.broker.start()
        self._http, self.metrics_port = self.probes.serve(
            s.metrics_host, s.metrics_port, self.metrics.registry
        )
        delivery = self.processor.attach(self._producer)
        self.decision_log.connect(self._producer)
        if s.joined_log:
            self.joined_log = JoinedLog(s.joined_log, s.feature_dim, delivery)
            self.processor.joined_log = self.checkpointer.joined_log = self.joined_log
            self.engine.keep_distribution = True
        self._consumer = Consumer(consumer_config(s))
        self.checkpointer.clients = Clients(self._consumer, delivery, StatePublisher(s))
        self.membership.start(self._consumer, delivery)
        self.ends.start()
        self.processor.may_publish = self.membership.watch.check
        self.stages.start()
        try:
            while not self._stopping.is_set():
                self.turn()
        except BaseException as exc:
            self._abort(exc)
            raise
        self._shutdown()

    def turn(self) -> None:
        """One pass: consume a batch, process it, expire, learn, deliver, checkpoint when due."""
        try:
            self._turn()
        except Paused as exc:
            self.membership.rejoin(exc)

    def _turn(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        s, lap = self.settings, self.stages.lap
        self.membership.check()
        fetched_at = time.time()  # an end of partition seen now holds what came before
        # The wait for a first message (when nothing was fetched) is no turn's work.
        msgs = fetch_batch(consumer, s.batch_size, s.poll_timeout_s, self.stages.start_turn)
        consumed_at = time.perf_counter()
        lap("consume")
        read = self.processor.handle(msgs, time.time(), consumed_at, fetched_at)
        self.ends.observe(consumer, self.clock)
        paused = self.balance.update(consumer, len(self.joins), len(self.joins.early), read)
        if paused is not None:
            self.metrics.p_topic_pauses.labels(paused).inc()
        lap("balance")
        self.checkpointer.finish(block=False)
        lap("checkpoint_finish")
        self.memory.check()
        self.probes.turned()
        lap("memory")
        if self.reporter.due(busy=self.checkpointer.writing is not None):
            self.report_metrics()
            lap("report")
        if self.checkpointer.due(s.checkpoint_interval_s) and (
            self.broker is None or self.broker.reachable  # an outage: nothing to flush
        ):
            self.checkpoint(wait=False)
        self.stages.end_turn()
        self.stats.turns += 1
        if self.on_turn is not None:
            self.on_turn(self)

    def checkpoint(self, wait: bool = True) -> Outcome:
        """See :class:`Checkpointer`; ``wait`` on revoke and shutdown."""
        if self.failed:
            return Skipped("stopped by an unexpected error")
        return self.checkpointer.checkpoint(
            wait, self._stopping.time_left(wait), lambda: self._stopping.by
        )

    def report_metrics(self) -> list[dict[str, Any]]:
        events = self.reporter.report(consumer_lag(self._consumer))
        send_metrics(self._producer, self.settings.topic_metrics, events)
        return events

    def _shutdown(self) -> None:
        """Finish: learn buffered rewards, flush decisions, checkpoint, commit offsets."""
        consumer = self._consumer
        assert consumer is not None
        self.shutdown_clean = isinstance(self.checkpoint(), Written)
        if not self.shutdown_clean:
            log.error("the final checkpoint failed: the last successful one stands")
        self.rebalance.closing = True
        consumer.close()
        self._release()
        log.info(
            "stopped after %d decisions, %d rewards joined",
            self.stats.decisions,
            self.stats.rewards_joined,
        )

    def _abort(self, why: BaseException) -> None:
        """After an unexpected exception: close without a checkpoint or a commit.

        The turn that raised may have processed part of its batch, so the state in memory
        is ahead of any offset that could be committed for it: the last checkpoint stands
        and a restart replays from it exactly once, as after kill -9."""
        self.failed = self.rebalance.failed = True
        self.probes.failed = f"{type(why).__name__}: {why}"  # /healthz says so from now
        log.error("stopping after an unexpected error: the last checkpoint stands", exc_info=why)
        self.checkpointer.abandon()
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
        self.checkpointer.close(min(5.0, self._stopping.time_left(True)))
        self.stages.close()
        if self._http is not None:
            self._http.shutdown()
        if self.joined_log is not None:
            self.joined_log.close()
        if self.broker is not None:
            self.broker.stop()
        self.membership.stop()
        self.ends.stop()
        self._store.close()
        # librdkafka's clients close when their objects go: drop them now, or a caller
        # that keeps the stopped service holds their connections until it exits.
        self._consumer = self._producer = None
        self.processor.detach()
        self.ready.clear()
