"""This instance's place in the consumer group: it subscribes, is deposed when it loses
partitions before it could hand them over, and joins again after a freeze past its
session (SIGSTOP, a suspended VM), when another member may hold its partitions already.
Either way nothing more of this instance's reaches Kafka for those partitions: its write
in flight is abandoned and its queued records are withdrawn."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Consumer

from stream.config import Settings
from stream.kafka.delivery import Delivery
from stream.lifecycle import Paused, PauseWatch
from stream.state.checkpointer import Checkpointer
from stream.state.ownership import Ownership
from stream.state.rebalance import Rebalance

log = logging.getLogger(__name__)


class Membership:
    def __init__(
        self,
        settings: Settings,
        rebalance: Rebalance,
        ownership: Ownership,
        checkpointer: Checkpointer,
        ready: threading.Event,
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
