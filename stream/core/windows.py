"""What the join stores share: keys, per-partition times, and change counters."""

from __future__ import annotations

from collections.abc import Mapping

Key = tuple[str, str]  # (domain, event_id)
# The time up to which windows have closed: one for every partition, or one per partition
# (a partition without one: none has).
Until = float | Mapping[int, float]
# domain -> a number bumped by every change of what a checkpoint of the domain holds
Changes = dict[str, int]


def until_of(until: Until, partition: int) -> float:
    if isinstance(until, int | float):
        return float(until)
    return until.get(partition, float("-inf"))
