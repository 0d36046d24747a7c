"""Contexts and rewards are read at the same pace: the topic that runs ahead waits.

When one side's holding area is nearly full (``HIGH`` of its bound) and the other topic's
newest record read is more than ``SLACK_S`` older, this topic is paused until the area is
down to ``LOW``, the other has caught up, or a read brings nothing. Why, with the
measurement that led to it: docs/design.md, "Flow control".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

log = logging.getLogger(__name__)

# Of the bound: pause the topic running ahead from here (a turn of RL_BATCH_SIZE = 10,000
# messages then still fits under the default bound of 100,000) ...
HIGH = 0.8
LOW = 0.6  # ... until what it left waiting is down to here
SLACK_S = 2.0  # the other topic's newest record this much older counts as behind


@dataclass
class _Side:
    topic: str
    held: str  # what it leaves waiting when it runs ahead (for the log)
    newest_ms: int = 0  # newest record timestamp read from the topic
    armed: bool = True


class TopicBalance:
    """Pauses and resumes one consumer's context or reward partitions (module doc)."""

    def __init__(self, contexts_topic: str, rewards_topic: str, bound: int, batch: int = 0) -> None:
        # A turn of ``batch`` messages after the one that crossed it still fits the bound.
        self.high = max(1, min(int(bound * HIGH), bound - batch))
        self.low = int(bound * LOW)
        self.contexts = _Side(contexts_topic, "decisions pending")
        self.rewards = _Side(rewards_topic, "rewards held for their contexts")
        self.paused: list[TopicPartition] = []
        self._ahead: _Side | None = None  # the side whose partitions are paused

    def observe(self, context: Message | None, reward: Message | None) -> None:
        """A turn read these as its last context and last reward (None: none of that kind)."""
        now_ms = int(time.time() * 1000)
        for side, m in ((self.contexts, context), (self.rewards, reward)):
            if m is not None:
                # The other side may pause again: this one is being read.
                self._other(side).armed = True
                # A record stamped in the future (a producer's clock ahead) counts as
                # now: one bad clock must not make its topic look ahead for good.
                side.newest_ms = max(side.newest_ms, min(_timestamp_ms(m), now_ms))

    def update(self, consumer: Consumer, pending: int, early: int, fetched: int) -> str | None:
        """After a turn that read ``fetched`` messages and left ``pending`` decisions and
        ``early`` rewards waiting; returns the topic it paused now, if any."""
        ahead = self._ahead
        if ahead is not None:
            held = pending if ahead is self.contexts else early
            if fetched == 0:
                ahead.armed = False  # the other topic has no backlog: the bound decides
            if not (fetched == 0 or held <= self.low or not self._behind(ahead)):
                return None
            try:
                consumer.resume(self.paused)
            except KafkaException as exc:  # e.g. no longer assigned
                log.warning("resuming %s failed: %s", ahead.topic, exc)
            log.info("%s resumed: %d %s", ahead.topic, held, ahead.held)
            self.paused, self._ahead = [], None
        # The other side may have run ahead meanwhile (it reads what it prefetched while
        # the resumed one fetches again): it waits now.
        for side, held in ((self.contexts, pending), (self.rewards, early)):
            if side is not ahead and side.armed and held >= self.high and self._behind(side):
                return side.topic if self._pause(consumer, side, held) else None
        return None

    def reset(self) -> None:
        """The assignment changed: librdkafka forgets pauses with the partitions, and what
        was read before says nothing of where the new assignment's partitions stand."""
        self.paused, self._ahead = [], None
        for side in (self.contexts, self.rewards):
            side.armed, side.newest_ms = True, 0

    def _other(self, side: _Side) -> _Side:
        return self.rewards if side is self.contexts else self.contexts

    def _behind(self, side: _Side) -> bool:
        """Whether the other topic's reading lags this one's by more than the slack."""
        return side.newest_ms - self._other(side).newest_ms > SLACK_S * 1000

    def _pause(self, consumer: Consumer, side: _Side, held: int) -> bool:
        tps = [
            TopicPartition(tp.topic, tp.partition)
            for tp in consumer.assignment()
            if tp.topic == side.topic
        ]
        if not tps:
            return False
        try:
            consumer.pause(tps)
        except KafkaException as exc:
            log.warning("pausing %s failed: %s", side.topic, exc)
            return False
        self.paused, self._ahead = tps, side
        other = self._other(side)
        behind = (
            f"{(side.newest_ms - other.newest_ms) / 1000:.1f} s behind"
            if other.newest_ms
            else "nothing yet"
        )
        log.info("%s paused: %d %s; %s read %s", side.topic, held, side.held, other.topic, behind)
        return True


def _timestamp_ms(m: Message) -> int:
    kind, ms = m.timestamp()
    return 0 if kind == TIMESTAMP_NOT_AVAILABLE else max(0, ms)
