"""The consumer group's rebalance callbacks: what the service holds follows what it is
assigned, checkpointing on revoke and dropping unsaved state on loss."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream.config import Settings
from stream.failpoints import Failpoints
from stream.failpoints import check as failpoint
from stream.kafka.balance import TopicBalance
from stream.state.checkpointer import Outcome, Written
from stream.state.ownership import TP, Ownership

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
        deposed: Callable[[set[int]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ownership = ownership
        self.balance = balance
        self.checkpoint = checkpoint
        self.ready = ready
        self.failpoints = failpoints
        # Told which partitions this instance lost before it could hand them over: it
        # stops publishing anything for them (state, decisions, offsets).
        self.deposed = deposed
        self.failed = False  # closing after an unexpected error: nothing is checkpointed
        self.closing = False  # shutdown's checkpoint already holds everything processed
        # Rejoining after a freeze: the state was dropped, nothing is checkpointed.
        self.dropped = False
        self.assignments = 0
        self.revocations = 0
        self.losses = 0

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
        self.dropped = False
        self.assignments += 1
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
        self.revocations += 1
        if self.failed or self.dropped:
            return
        failpoint(self.failpoints, "revoke")
        if self.closing:
            return
        if not isinstance(self.checkpoint(), Written) and self.ownership.held:
            log.error("checkpoint on revoke failed: releasing every partition's state")
            if self.deposed is not None:  # its unsent decisions must not land later
                self.deposed(set(self.ownership.held))
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
        self.losses += 1
        lost = {tp.partition for tp in partitions} & self.ownership.held
        if self.deposed is not None:
            self.deposed(lost)
        # Not waiting for an in-flight write: its snapshot keeps its own references
        # (copy-on-write), so releasing the live state now is safe.
        self.ownership.release(lost)


def check_resume_points(
    consumer: Consumer,
    partitions: list[TopicPartition],
    offsets: dict[TP, int],
    state_topic: str,
) -> None:
    """Warn about an assignment whose state does not match its topics: a checkpoint that
    resumes past a partition's end (the topic was emptied or recreated; the embedded
    broker keeps nothing across its restarts), or partitions the group committed offsets
    for while no checkpoint (local or ``state_topic``) holds them (their state was lost)."""
    fresh = []
    for tp in partitions:
        off = offsets.get((tp.topic, tp.partition))
        if off is None:
            fresh.append(TopicPartition(tp.topic, tp.partition))
            continue
        try:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=5.0, cached=False
            )
        except KafkaException as exc:
            log.debug("no watermarks for %s[%d]: %s", tp.topic, tp.partition, exc)
            continue
        if 0 <= high < off:
            log.warning(
                "%s[%d]: the checkpoint resumes at offset %d but the partition ends at %d: "
                "the topic was emptied or recreated since; reading it from its start",
                tp.topic,
                tp.partition,
                off,
                high,
            )
    if not fresh:
        return
    try:
        committed = consumer.committed(fresh, timeout=5.0)
    except KafkaException as exc:
        log.debug("committed offsets unavailable: %s", exc)
        return
    lost = [f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in committed if tp.offset > 0]
    if lost:
        log.warning(
            "state lost: the group committed offsets for %s but neither the local store "
            "nor %s holds their state; their domains start afresh from those offsets",
            ", ".join(lost),
            state_topic,
        )
