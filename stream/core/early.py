"""Rewards read before their context: held for it, in its contexts partition's time.

A reward may be read before the context it answers (the rewards partition was read
first, or a replay after a restore reads the topics in another order). It is held until
its context is decided, or until its deadline (its record time + the early wait) is
before its partition's ``until`` (the contexts partition's stream time, see
:mod:`stream.core.streamtime`): then its context can no longer come, and it is given up on.
Every reward read for an event is held, and all are claimed in read order, so the join
judges them as it would have had they come after the context (the first in time joins; the
others are duplicate or late) — read order between the topics never decides a join.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from stream.core.windows import Changes, Key, Until, until_of


@dataclass(slots=True)
class EarlyReward:
    """A reward that came before its decision, held until ``deadline`` for its context."""

    domain: str
    event_id: str
    reward: float
    deadline: float  # epoch seconds: ``timestamp`` + the early wait
    partition: int = -1  # the input partition it was read from
    source: Any = None  # its message, dead-lettered if the context never comes
    timestamp: float = 0.0  # its record time: judged against its decision's deadline


class EarlyRewards:
    """At most ``bound`` held rewards, each for ``wait_s`` (0: none is held)."""

    def __init__(self, bound: int, wait_s: float, changes: Changes) -> None:
        self.bound = bound
        self.wait_s = wait_s
        self._changes = changes
        # Per input partition, in insertion order (which is deadline order while its
        # rewards come in time order); an event's rewards in read order.
        self._held: dict[int, OrderedDict[Key, list[EarlyReward]]] = {}
        self._n = 0
        self._per_partition: dict[int, int] = {}  # rewards held (not events)
        self._per_domain: dict[str, int] = {}

    def __len__(self) -> int:
        return self._n

    def hold(
        self,
        domain: str,
        event_id: str,
        reward: float,
        at: float,
        partition: int = -1,
        source: Any = None,
    ) -> tuple[bool, list[EarlyReward]]:
        """Keep a reward stamped ``at`` in case its context is yet to come. Returns whether
        it is held, and the oldest held rewards pushed out to stay within the bound: they
        are given up on."""
        if self.wait_s <= 0:
            return False, []
        dropped: list[EarlyReward] = []
        while self._n >= self.bound:
            part = max(self._per_partition, key=self._per_partition.__getitem__)
            _, old = self._held[part].popitem(last=False)
            for e in old:
                self._gone(e)
            dropped.extend(old)
        early = EarlyReward(domain, event_id, reward, at + self.wait_s, partition, source, at)
        self._add(early)
        return True, dropped

    def restore(self, early: EarlyReward) -> None:
        """Hold a reward from a checkpoint again (keeps its original deadline); one held
        already (restored twice, from two records) is not held twice."""
        held = self._held.get(early.partition)
        same = [] if held is None else held.get((early.domain, early.event_id), [])
        if not any((e.timestamp, e.reward) == (early.timestamp, early.reward) for e in same):
            self._add(early)

    def claim(self, domain: str, event_id: str, partition: int = -1) -> list[EarlyReward]:
        """The rewards held for this decision (its context's ``partition``), taken, in the
        order they were read."""
        if not self._n:  # the common case: skip building the key
            return []
        held = self._held.get(partition)
        early = None if held is None else held.pop((domain, event_id), None)
        if early is None:
            return []
        for e in early:
            self._gone(e)
        return early

    def expire(self, until: Until) -> list[EarlyReward]:
        """Remove the rewards whose context can no longer come: deadline before their
        partition's ``until``."""
        out = []
        for part, held in self._held.items():
            t = until_of(until, part)
            while held:
                key, same = next(iter(held.items()))
                if same[0].deadline >= t:
                    break
                gone = [e for e in same if e.deadline < t]
                for e in gone:
                    same.remove(e)
                    self._gone(e)
                out.extend(gone)
                if same:  # a later reward for the event waits on, behind the others
                    held.move_to_end(key)
                else:
                    del held[key]
        return out

    def domains(self) -> set[str]:
        """Domains with rewards held (a reward-only domain counts as a domain)."""
        return set(self._per_domain)

    def items(self) -> list[EarlyReward]:
        return [e for held in self._held.values() for same in held.values() for e in same]

    def partitions(self) -> set[int]:
        return {p for p, held in self._held.items() if held}

    def drop(self, domains: set[str], partitions: set[int]) -> int:
        """Forget the rewards of ``domains`` or read from ``partitions``; returns how many."""
        n = 0
        for part, held in self._held.items():
            keys = [k for k in held if k[0] in domains or part in partitions]
            for k in keys:
                for e in held.pop(k):
                    self._gone(e)
                    n += 1
        return n

    def _add(self, early: EarlyReward) -> None:
        held = self._held.get(early.partition)
        if held is None:
            held = self._held[early.partition] = OrderedDict()
        held.setdefault((early.domain, early.event_id), []).append(early)
        self._n += 1
        self._per_partition[early.partition] = self._per_partition.get(early.partition, 0) + 1
        self._per_domain[early.domain] = self._per_domain.get(early.domain, 0) + 1
        self._changes[early.domain] = self._changes.get(early.domain, 0) + 1

    def _gone(self, early: EarlyReward) -> None:
        domain = early.domain
        self._n -= 1
        self._per_partition[early.partition] -= 1
        n = self._per_domain[domain] - 1
        if n:
            self._per_domain[domain] = n
        else:
            del self._per_domain[domain]
        self._changes[domain] = self._changes.get(domain, 0) + 1
