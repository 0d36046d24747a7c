"""Decisions awaiting their reward: bounded, windowed, first reward wins.

Pending decisions are kept in insertion order, which is deadline order because every
decision waits the same ``wait_s``; expiry and eviction therefore pop from the front in
O(1). A bounded memory of recently finished keys tells a duplicate reward (already
joined) and a late one (already expired) apart from one for an event never seen.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgspec
import numpy as np

from policies.features import EncodedContext


class Outcome(Enum):
    JOINED = "joined"
    DUPLICATE = "duplicate"  # the decision already got its reward
    LATE = "late"  # the decision expired before this reward came
    UNKNOWN = "unknown"  # no decision with this (domain, event_id) is remembered


class Pending(msgspec.Struct, gc=False):
    """A decision awaiting its reward; untracked by the cyclic collector, as
    :class:`EncodedContext` (one per pending decision, no cycles)."""

    domain: str
    event_id: str
    encoded: EncodedContext
    chosen: int  # index of the action in encoded.candidates
    probability: float
    policy: str
    variant: str
    decided_at: float  # epoch seconds
    deadline: float  # epoch seconds
    # Kept only for the joined log (RL_JOINED_LOG): the full distribution and the
    # policy's version when it decided.
    distribution: tuple[float, ...] | None = None
    policy_version: int = 0


Key = tuple[str, str]


@dataclass(slots=True)
class EarlyReward:
    """A reward that came before its decision, held until ``deadline`` for its context."""

    domain: str
    event_id: str
    reward: float
    deadline: float  # epoch seconds
    partition: int = -1  # the input partition it was read from
    source: Any = None  # its message, dead-lettered if the context never comes


class PendingJoins:
    """At most ``max_pending`` decisions (``max_per_domain`` of one domain), each waiting
    at most ``wait_s`` for a reward.

    When full, a domain's new decision pushes out its own oldest; when the total is full,
    the oldest of the domain holding the most: a busy domain never evicts a quiet one's.
    """

    def __init__(
        self,
        max_pending: int,
        wait_s: float,
        remember: int | None = None,
        early_wait_s: float = 0.0,
        max_per_domain: int | None = None,
    ) -> None:
        self.max_pending = max_pending
        self.max_per_domain = max_per_domain or max_pending
        self.wait_s = wait_s
        self.early_wait_s = early_wait_s
        self._remember = remember if remember is not None else max_pending
        # OrderedDicts pop their oldest in O(1); a plain dict leaves deleted slots at its
        # front that every next(iter()) scans again (docs/design.md, "Pending joins").
        self._pending: OrderedDict[Key, Pending] = OrderedDict()
        self._by_domain: dict[str, OrderedDict[str, None]] = {}  # event ids, oldest first
        # Finished joins, "domain NUL event_id" -> (sequence number << 1 | joined), the
        # last ``remember`` in the ring in finishing order. str keys and int values keep
        # the dict out of the cyclic collector's sight, and it does not traverse a numpy
        # array: a full collection no longer visits every remembered key.
        self._finished: dict[str, int] = {}
        self._ring: np.ndarray[Any, np.dtype[np.object_]] = np.full(self._remember, None)
        self._finishes = 0
        # Rewards that arrived before their context was decided (another partition was
        # read first, or a replay after a restart reads the topics in another order).
        # Insertion order is deadline order.
        self._early: OrderedDict[Key, EarlyReward] = OrderedDict()
        self._early_per_domain: dict[str, int] = {}  # held early rewards by domain

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: Key) -> bool:
        return key in self._pending

    def add(self, p: Pending) -> list[Pending]:
        """Register a decision; returns the oldest decisions evicted to stay in bounds."""
        key = (p.domain, p.event_id)
        if key in self._pending:
            raise KeyError(f"{key} is already pending")
        if self._finished:  # a reused event id starts afresh
            self._finished.pop(f"{p.domain}\x00{p.event_id}", None)
        evicted = []
        own = self._by_domain.get(p.domain)
        if own is None:  # not setdefault(OrderedDict()): one allocation per decision
            own = self._by_domain[p.domain] = OrderedDict()
        while len(own) >= self.max_per_domain:
            evicted.append(self._pop_of(p.domain))
        while len(self._pending) >= self.max_pending:
            fullest = max(self._by_domain, key=lambda d: len(self._by_domain[d]))
            evicted.append(self._pop_of(fullest))
        self._pending[key] = p
        self._by_domain.setdefault(p.domain, own)[p.event_id] = None
        return evicted

    def take(self, domain: str, event_id: str) -> tuple[Outcome, Pending | None]:
        """Claim the pending decision for a reward; only the first claim joins."""
        key = (domain, event_id)
        p = self._pending.pop(key, None)
        if p is not None:
            self._unindex(domain, event_id)
            self._finish(key, Outcome.DUPLICATE)
            return Outcome.JOINED, p
        return _outcome(self._finished.get(_name(key))), None

    def was_joined(self, domain: str, event_id: str) -> bool:
        """Whether this event's decision got its reward (remembered for the last
        ``remember`` finished joins): its id must not be decided again, or a replayed
        reward could join the new decision."""
        finished = self._finished.get(f"{domain}\x00{event_id}")
        return finished is not None and finished & 1 == 1

    def discard(self, domain: str, event_id: str) -> Pending | None:
        """Forget a pending decision that never reached its consumers (no reward can
        come for it); it leaves no memory of a finished join."""
        p = self._pending.pop((domain, event_id), None)
        if p is not None:
            self._unindex(domain, event_id)
        return p

    def expire(self, now: float) -> list[Pending]:
        """Remove and return every decision whose window has closed."""
        out = []
        pending = self._pending
        while pending:
            first = next(iter(pending.values()))
            if first.deadline > now:
                break
            out.append(self._pop_oldest())
        return out

    def forget_finished(self) -> int:
        """Drop the memory of finished joins (memory pressure); returns how many."""
        n = len(self._finished)
        self._finished.clear()
        self._ring[:] = None
        return n

    def count_by_domain(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d, _ in self._pending:
            out[d] = out.get(d, 0) + 1
        return out

    def items(self) -> list[Pending]:
        return list(self._pending.values())

    # -- rewards that came before their decision ------------------------------------------
    def hold_early(
        self,
        domain: str,
        event_id: str,
        reward: float,
        now: float,
        partition: int = -1,
        source: Any = None,
    ) -> tuple[bool, list[EarlyReward]]:
        """Keep an unknown reward for ``early_wait_s`` in case its context is yet to come.

        Returns whether it is held, and the oldest held rewards pushed out to stay within
        ``max_pending``: they are given up on.
        """
        key = (domain, event_id)
        if self.early_wait_s <= 0 or key in self._early or _name(key) in self._finished:
            return False, []
        dropped = []
        while len(self._early) >= self.max_pending:
            _, old = self._early.popitem(last=False)
            self._early_gone(old.domain)
            dropped.append(old)
        self._early[key] = EarlyReward(
            domain, event_id, reward, now + self.early_wait_s, partition, source
        )
        self._early_per_domain[domain] = self._early_per_domain.get(domain, 0) + 1
        return True, dropped

    def restore_early(self, early: EarlyReward) -> None:
        """Re-hold an early reward from a checkpoint (keeps its original deadline)."""
        key = (early.domain, early.event_id)
        if key not in self._early:
            self._early_per_domain[early.domain] = self._early_per_domain.get(early.domain, 0) + 1
        self._early[key] = early

    def claim_early(self, domain: str, event_id: str) -> float | None:
        if not self._early:  # the common case: skip building the key
            return None
        held = self._early.pop((domain, event_id), None)
        if held is None:
            return None
        self._early_gone(domain)
        return held.reward

    def expire_early(self, now: float) -> list[EarlyReward]:
        """Remove the early rewards whose context never came."""
        out = []
        while self._early:
            first = next(iter(self._early.values()))
            if first.deadline > now:
                break
            out.append(self._early.pop((first.domain, first.event_id)))
            self._early_gone(first.domain)
        return out

    def early_domains(self) -> set[str]:
        """Domains with early rewards held (a reward-only domain counts as a domain)."""
        return set(self._early_per_domain)

    def _early_gone(self, domain: str) -> None:
        n = self._early_per_domain[domain] - 1
        if n:
            self._early_per_domain[domain] = n
        else:
            del self._early_per_domain[domain]

    @property
    def n_early(self) -> int:
        """Rewards held for contexts not read yet."""
        return len(self._early)

    def early_items(self) -> list[EarlyReward]:
        return list(self._early.values())

    def drop(self, domains: set[str], partitions: set[int]) -> int:
        """Forget the pending decisions of ``domains`` and the early rewards of those
        domains or ``partitions`` (released to another instance, which restores them from
        the checkpoint); returns how many."""
        keys = [k for k in self._pending if k[0] in domains]
        for k in keys:
            del self._pending[k]
            self._unindex(*k)
        # The memory of finished joins goes too: it describes state that is being thrown
        # away. Kept, a reward replayed after a restore (before its replayed context)
        # would be taken for a duplicate and lost.
        for name in [k for k in self._finished if k.split("\x00", 1)[0] in domains]:
            del self._finished[name]
        early = [k for k, v in self._early.items() if k[0] in domains or v.partition in partitions]
        for k in early:
            del self._early[k]
            self._early_gone(k[0])
        return len(keys) + len(early)

    def _pop_oldest(self) -> Pending:
        key, p = self._pending.popitem(last=False)
        self._unindex(*key)
        self._finish(key, Outcome.LATE)
        return p

    def _pop_of(self, domain: str) -> Pending:
        """Evict ``domain``'s oldest pending decision."""
        event_id = next(iter(self._by_domain[domain]))
        p = self._pending.pop((domain, event_id))
        self._unindex(domain, event_id)
        self._finish((domain, event_id), Outcome.LATE)
        return p

    def _unindex(self, domain: str, event_id: str) -> None:
        own = self._by_domain[domain]
        del own[event_id]
        if not own:
            del self._by_domain[domain]

    def shed(self, share: float) -> list[Pending]:
        """Evict the oldest ``share`` of the pending decisions (memory pressure)."""
        n = int(len(self._pending) * share)
        return [self._pop_oldest() for _ in range(n)]

    def count_of(self, domain: str) -> int:
        own = self._by_domain.get(domain)
        return 0 if own is None else len(own)

    def _finish(self, key: Key, outcome: Outcome) -> None:
        if not self._remember:
            return
        n, ring, finished = self._finishes, self._ring, self._finished
        name = f"{key[0]}\x00{key[1]}"  # as _name(key), inline: once per decision
        slot = n % self._remember
        old = ring[slot]  # finished ``remember`` finishes ago: forgotten, unless since renewed
        if old is not None and finished.get(old, -1) >> 1 == n - self._remember:
            del finished[old]
        ring[slot] = name
        finished[name] = n << 1 | (outcome is Outcome.DUPLICATE)
        self._finishes = n + 1


def _name(key: Key) -> str:
    """A finished join's key: domains never hold a NUL, so the first one splits it."""
    return f"{key[0]}\x00{key[1]}"


def _outcome(finished: int | None) -> Outcome:
    if finished is None:
        return Outcome.UNKNOWN
    return Outcome.DUPLICATE if finished & 1 else Outcome.LATE
