"""Stream time: the records' time, per input partition, as Kafka Streams defines it.

The stream time of a partition is the newest record timestamp read from it. A decision's
reward window closes once its rewards partition's stream time has passed the deadline (no
reward stamped in time can still be behind it), or once that partition was seen read to
its end at a wall-clock time past the deadline (a quiet partition still frees its memory).
"Seen read to its end" is an observation made at a time: the consumer reaching a
partition's end, or an answer about its end that the loop had consumed past
(:class:`stream.kafka.endwatch.EndWatch`); never the wall clock of now, which says nothing
about records still waiting while the consumer was not fetching (a rebalance, a pause).
Stream time allows ``grace_s`` for rewards that arrive out of timestamp order (several
producers' clocks, records in flight). The end of a partition allows ``quiet_s``: a record
a producer sent in time may not be readable yet while the cluster acknowledges it late (a
follower lost, until Kafka's ``replica.lag.time.max.ms`` drops it from the in-sync set).
Early rewards wait the same way, in the contexts partition's time.
"""

from __future__ import annotations

from typing import Any

NEVER = float("-inf")


class StreamTime:
    def __init__(self, grace_s: float, quiet_s: float | None = None) -> None:
        self.grace_s = grace_s
        self.quiet_s = grace_s if quiet_s is None else max(grace_s, quiet_s)
        self.contexts: dict[int, float] = {}  # partition -> newest context record time
        self.rewards: dict[int, float] = {}
        # partition -> the latest wall-clock time it was seen read to its end
        self._contexts_end: dict[int, float] = {}
        self._rewards_end: dict[int, float] = {}
        # partition -> the next offset to read (what has been consumed)
        self._contexts_at: dict[int, int] = {}
        self._rewards_at: dict[int, int] = {}

    def read(self, is_context: bool, partition: int, t: float) -> None:
        """A record stamped ``t`` was read from ``partition``."""
        times = self.contexts if is_context else self.rewards
        if t > times.get(partition, NEVER):
            times[partition] = t

    def consumed(self, is_context: bool, partition: int, next_offset: int) -> None:
        """Everything of ``partition`` before ``next_offset`` has been read."""
        (self._contexts_at if is_context else self._rewards_at)[partition] = next_offset

    def position(self, is_context: bool, partition: int) -> int | None:
        return (self._contexts_at if is_context else self._rewards_at).get(partition)

    def seen_end(self, is_context: bool, partition: int, at: float) -> None:
        """Every record appended to ``partition`` before wall-clock time ``at`` is read."""
        ends = self._contexts_end if is_context else self._rewards_end
        if at > ends.get(partition, NEVER):
            ends[partition] = at

    def forget(self, partitions: set[int]) -> None:
        """Partitions no longer held (their time starts again when they come back)."""
        tables: tuple[dict[int, Any], ...] = (
            self.contexts,
            self.rewards,
            self._contexts_end,
            self._rewards_end,
            self._contexts_at,
            self._rewards_at,
        )
        for table in tables:
            for p in partitions:
                table.pop(p, None)

    def rewards_until(self, partitions: set[int]) -> dict[int, float]:
        """Per partition, the deadline before which a decision's window has closed."""
        return self._until(self.rewards, self._rewards_end, partitions)

    def contexts_until(self, partitions: set[int]) -> dict[int, float]:
        """Per partition, the deadline before which an early reward's context cannot come."""
        return self._until(self.contexts, self._contexts_end, partitions)

    def _until(
        self, times: dict[int, float], ends: dict[int, float], partitions: set[int]
    ) -> dict[int, float]:
        grace, quiet = self.grace_s, self.quiet_s
        return {p: max(times.get(p, NEVER) - grace, ends.get(p, NEVER) - quiet) for p in partitions}
