"""The consumer group's rebalance callbacks: what the service holds follows what it is
assigned, checkpointing on revoke and dropping unsaved state on loss."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from stream.config import Settings
from stream.failpoints import Failpoints
from stream.failpoints import check as failpoint
from stream.kafka.balance import TopicBalance
from stream.state.checkpointer import Outcome, Written
from stream.state.ownership import Ownership, check_resume_points

log = logging.getLogger(__name__)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)


class Rebalance:
    """``on_assign`` / ``on_revoke`` / ``on_lost`` for ``Consumer.subscribe``."""

    def __init__(
        self,
        settings: Settings,
        ownership: Ownership,
        balance: TopicBalance,
        checkpoint: Callable[[], Outcome],
        ready: threading.Event,
        failpoints: Failpoints | None,
    ) -> None:
        self.settings = settings
        self.ownership = ownership
        self.balance = balance
        self.checkpoint = checkpoint
        self.ready = ready
        self.failpoints = failpoints
        self.failed = False  # closing after an unexpected error: nothing is checkpointed
        self.closing = False  # shutdown's checkpoint already holds everything processed

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Hold exactly these partitions: release the others' domains, restore the new
        # ones from the newest checkpoint, then resume each partition where its state
        # stands, so the tail is replayed into it exactly once.
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
            _names(partitions),
            resumed,
            len(self.ownership.domains),
        )
        self.ready.set()

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Checkpoint now; the domains stay in memory until the next assignment says
        # which partitions went elsewhere. If the checkpoint fails, the in-memory state
        # is ahead of every stored one: drop it all, so it is restored exactly.
        log.info("revoked %s", _names(partitions))
        self.ready.clear()
        self.balance.reset()
        if self.failed:
            return
        failpoint(self.failpoints, "revoke")
        if self.closing:
            return
        if not isinstance(self.checkpoint(), Written) and self.ownership.held:
            log.error("checkpoint on revoke failed: releasing every partition's state")
            self.ownership.release_all()

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group moved on without us (session timeout): another member may own these
        # partitions already, so nothing is checkpointed or committed for them; their
        # state, ahead of the last checkpoint, is dropped and restored if they come back.
        log.warning(
            "lost %s (session expired): dropping their state until they are reassigned",
            _names(partitions),
        )
        self.ready.clear()
        self.balance.reset()
        # Not waiting for an in-flight write: its snapshot keeps its own references
        # (copy-on-write), so releasing the live state now is safe.
        self.ownership.release({tp.partition for tp in partitions} & self.ownership.held)
