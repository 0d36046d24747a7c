"""Stream time: the records' time, per input partition, as Kafka Streams defines it.

The stream time of a partition is the newest record timestamp read from it. A decision's
reward window closes once its rewards partition's stream time has passed the deadline
(no reward stamped in time can still be behind it), or once that partition has been read
to its end and the wall clock has passed the deadline (a quiet partition still frees its
memory). Both allow ``grace_s`` for rewards that arrive out of timestamp order (several
producers' clocks, records in flight). Early rewards wait for their context the same way,
in the contexts partition's time.
"""

from __future__ import annotations

NEVER = float("-inf")


class StreamTime:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.contexts: dict[int, float] = {}  # partition -> newest context record time
        self.rewards: dict[int, float] = {}
        # Partitions read to their end (no record read from them since the end was seen).
        self._contexts_end: set[int] = set()
        self._rewards_end: set[int] = set()

    def read(self, is_context: bool, partition: int, t: float) -> None:
        """A record stamped ``t`` was read from ``partition``."""
        times = self.contexts if is_context else self.rewards
        if t > times.get(partition, NEVER):
            times[partition] = t
        (self._contexts_end if is_context else self._rewards_end).discard(partition)

    def at_end(self, is_context: bool, partition: int) -> None:
        """The partition has been read to its end."""
        (self._contexts_end if is_context else self._rewards_end).add(partition)

    def forget(self, partitions: set[int]) -> None:
        """Partitions no longer held (their time starts again when they come back)."""
        for p in partitions:
            self.contexts.pop(p, None)
            self.rewards.pop(p, None)
            self._contexts_end.discard(p)
            self._rewards_end.discard(p)

    def rewards_until(self, wall: float, partitions: set[int]) -> dict[int, float]:
        """Per partition, the deadline before which a decision's window has closed."""
        return self._until(self.rewards, self._rewards_end, wall, partitions)

    def contexts_until(self, wall: float, partitions: set[int]) -> dict[int, float]:
        """Per partition, the deadline before which an early reward's context cannot come."""
        return self._until(self.contexts, self._contexts_end, wall, partitions)

    def _until(
        self, times: dict[int, float], ended: set[int], wall: float, partitions: set[int]
    ) -> dict[int, float]:
        out = {}
        for p in partitions:
            t = times.get(p, NEVER)
            if p in ended and wall > t:
                t = wall
            out[p] = t - self.grace_s
        return out
