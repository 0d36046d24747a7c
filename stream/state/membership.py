"""This instance's place in the consumer group: it subscribes, is deposed when it loses
partitions before it could hand them over, and joins again after a freeze past its
session (SIGSTOP, a suspended VM), when another member may hold its partitions already.
Either way nothing more of this instance's reaches Kafka for those partitions: its write
in flight is abandoned and its queued records are withdrawn."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

from stream.config import Settings
from stream.kafka.delivery import Delivery
from stream.lifecycle import Paused, PauseWatch
from stream.state.checkpointer import Checkpointer
from stream.state.ownership import Ownership
from stream.state.rebalance import Rebalance

log = logging.getLogger(__name__)

STALL_REPEAT_S = 60.0  # a stalled group's warning, at most this often
TANSU_CLUSTER = "tansu_cluster"  # the embedded broker's cluster id


class Membership:
    def __init__(
        self,
        settings: Settings,
        rebalance: Rebalance,
        ownership: Ownership,
        checkpointer: Checkpointer,
        ready: threading.Event,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.rebalance = rebalance
        self.ownership = ownership
        self.checkpointer = checkpointer
        self.ready = ready
        rebalance.deposed = self.deposed
        # A freeze this long may have cost the group session (its heartbeats stopped too).
        s = settings
        self.watch = PauseWatch((s.kafka_session_timeout_ms - s.kafka_heartbeat_interval_ms) / 1e3)
        self.consumer: Consumer | None = None
        self.delivery: Delivery | None = None
        self.rejoins = 0
        self.waiting_since: float | None = None  # in the group, no assignment yet
        self.stall = ""  # why no assignment came (for /readyz); empty while none is due
        self._warned = -STALL_REPEAT_S
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        """bandit_rebalances_total{event} and bandit_restores_total{source}, counted by
        the rebalance callbacks and the restores, read when Prometheus scrapes."""
        rb, own = self.rebalance, self.ownership
        yield _counters(
            "bandit_rebalances",
            "Group events of this member: partitions assigned, revoked, lost, and joins "
            "again after a freeze past the session",
            "event",
            assigned=rb.assignments,
            revoked=rb.revocations,
            lost=rb.losses,
            rejoined=self.rejoins,
        )
        yield _counters(
            "bandit_restores",
            "Partitions restored on assignment, by where their state came from",
            "source",
            local=own.restored_from_local,
            state_topic=own.restored_from_topic,
            empty=own.restored_empty,
        )

    def start(self, consumer: Consumer, delivery: Delivery) -> None:
        self.consumer, self.delivery = consumer, delivery
        delivery.may_resend = self.watch.running  # nothing given up on across a freeze
        self._subscribe()
        self.watch.start()
        s = self.settings
        log.info(
            "consuming %s and %s as group %s from %s",
            s.topic_contexts,
            s.topic_rewards,
            s.kafka_group_id,
            s.kafka_bootstrap_servers,
        )

    def stop(self) -> None:
        self.watch.stop()
        self.consumer = self.delivery = None

    def check(self) -> None:
        """Every turn: raises :class:`Paused` after a freeze past the session; names a
        group that has not assigned this member anything for RL_ASSIGNMENT_TIMEOUT_S."""
        self.watch.check()
        now = time.monotonic()
        if self.ready.is_set():
            self.waiting_since, self.stall = None, ""
            return
        if self.waiting_since is None:
            self.waiting_since = now
        waited = now - self.waiting_since
        if waited < self.settings.assignment_timeout_s:
            return
        if not self.stall:
            self.stall = self._stall_causes()
        if now - self._warned >= STALL_REPEAT_S:
            self._warned = now
            log.warning("no partitions assigned after %.0f s in the group: %s", waited, self.stall)

    def _stall_causes(self) -> str:
        s = self.settings
        causes = (
            f"group {s.kafka_group_id} keeps rebalancing (a member restarting in a loop, or "
            "one slower than max.poll.interval.ms) or its coordinator is unavailable; "
            "bandit_rebalances_total and the broker's logs tell which"
        )
        try:
            cluster = self.consumer.list_topics(timeout=2.0).cluster_id if self.consumer else None
        except Exception:  # noqa: BLE001 - the broker away: the generic causes stand
            cluster = None
        if cluster == TANSU_CLUSTER:
            causes = (
                "on the embedded broker most likely its known fault: a member that left while "
                "its join was pending holds the group for good. Restart `bandit-stream broker` "
                f"(its topics go with it) or use another RL_KAFKA_GROUP_ID; otherwise {causes}"
            )
        return causes

    def _subscribe(self) -> None:
        s, rb = self.settings, self.rebalance
        assert self.consumer is not None
        self.consumer.subscribe(
            [s.topic_contexts, s.topic_rewards],
            on_assign=rb.on_assign,
            on_revoke=rb.on_revoke,
            on_lost=rb.on_lost,
        )

    def deposed(self, partitions: set[int]) -> None:
        """Partitions lost before they could be handed over: nothing more of this
        instance's may reach Kafka for them (its queued records are withdrawn)."""
        self.checkpointer.lost()
        if self.delivery is not None:
            withdrawn = self.delivery.purge()
            if withdrawn:
                log.warning("withdrew %d queued records of lost partitions", withdrawn)

    def rejoin(self, why: Paused) -> None:
        """After a freeze past the group session: drop every partition's state unsaved,
        withdraw what is queued, and join the group again; whatever it assigns is
        restored from the checkpoints, exactly."""
        log.warning(
            "%s, past the group session: dropping the state of partitions %s without a "
            "checkpoint and joining the group again",
            why,
            sorted(self.ownership.held),
        )
        self.rejoins += 1
        self.deposed(set(self.ownership.held))
        self.checkpointer.finish(block=True)  # ends at once: it was abandoned
        self.rebalance.dropped = True
        self.ownership.release_all()
        self.ready.clear()
        assert self.consumer is not None
        self.consumer.unsubscribe()
        self._subscribe()


def _counters(name: str, doc: str, label: str, **values: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in values.items():
        family.add_metric([value], n)
    return family
