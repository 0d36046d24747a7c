"""Decisions awaiting their reward: bounded, windowed in stream time, first reward wins.

Time here is the records' time (Kafka's record timestamps, epoch seconds): a decision is
stamped with its context's time and waits ``wait_s`` of it for a reward stamped no later
than its deadline. Whether a window has closed is for the caller to say, per input
partition (:meth:`PendingJoins.expire` takes the time up to which each partition's
decisions may expire): the stream time of its rewards, or the wall clock once those are
read to their end (see :mod:`stream.core.streamtime`).

Pending decisions are kept per partition in insertion order, which is deadline order as
long as a partition's contexts come in time order; expiry pops from the front in O(1) (a
decision stamped earlier than one before it waits for that one: late, never early).
Beside them: the rewards read before their context (:mod:`stream.core.early`) and the memory
of finished joins (:mod:`stream.core.finished`), both checkpointed with the decisions.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum

import msgspec

from policies.features import EncodedContext
from stream.core.early import EarlyRewards
from stream.core.finished import FinishedJoins
from stream.core.windows import Changes, Key, Until, until_of


class Outcome(Enum):
    JOINED = "joined"
    DUPLICATE = "duplicate"  # the decision already got its reward
    LATE = "late"  # the decision expired before this reward came, or it is stamped too late
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
    decided_at: float  # its context's record time, epoch seconds
    deadline: float  # decided_at + the window: a reward stamped later is late
    # Kept only for the joined log (RL_JOINED_LOG): the full distribution and the
    # policy's version when it decided.
    distribution: tuple[float, ...] | None = None
    policy_version: int = 0


class PendingJoins:
    """At most ``max_pending`` decisions (``max_per_domain`` of one domain), each waiting
    at most ``wait_s`` of stream time for a reward.

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
        # Per domain, bumped by every change a checkpoint of the domain must carry.
        self._changes: Changes = {}
        self.early = EarlyRewards(max_pending, early_wait_s, self._changes)
        self.finished = FinishedJoins(
            remember if remember is not None else max_pending, self._changes
        )
        # Per input partition, in insertion order. OrderedDicts pop their oldest in O(1); a
        # plain dict leaves deleted slots at its front that every next(iter()) scans again
        # (docs/design.md, "Pending joins").
        self._queues: dict[int, OrderedDict[Key, Pending]] = {}
        self._partition: dict[str, int] = {}  # domain -> its partition
        self._n = 0
        self._by_domain: dict[str, OrderedDict[str, None]] = {}  # event ids, oldest first

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: Key) -> bool:
        p = self._partition.get(key[0])
        return p is not None and key in self._queues[p]

    def changes(self, domain: str) -> int:
        """A number that changes whenever the domain's joins do (its state-topic record
        is then out of date)."""
        return self._changes.get(domain, 0)

    def add(self, p: Pending, partition: int = -1) -> list[Pending]:
        """Register a decision of ``partition``; returns the oldest decisions evicted to
        stay in bounds."""
        key = (p.domain, p.event_id)
        if key in self:
            raise KeyError(f"{key} is already pending")
        if self.finished:  # a reused event id starts afresh
            self.finished.discard(f"{p.domain}\x00{p.event_id}")
        evicted = []
        own = self._by_domain.get(p.domain)
        if own is None:  # not setdefault(OrderedDict()): one allocation per decision
            own = self._by_domain[p.domain] = OrderedDict()
        while len(own) >= self.max_per_domain:
            evicted.append(self._pop_of(p.domain))
        while self._n >= self.max_pending:
            fullest = max(self._by_domain, key=lambda d: len(self._by_domain[d]))
            evicted.append(self._pop_of(fullest))
        known = self._partition.get(p.domain)
        if known is None:
            known = self._partition[p.domain] = partition
        queue = self._queues.get(known)
        if queue is None:
            queue = self._queues[known] = OrderedDict()
        queue[key] = p
        self._n += 1
        self._by_domain.setdefault(p.domain, own)[p.event_id] = None
        self._changes[p.domain] = self._changes.get(p.domain, 0) + 1
        return evicted

    def take(
        self, domain: str, event_id: str, at: float | None = None
    ) -> tuple[Outcome, Pending | None]:
        """Claim the pending decision for a reward stamped ``at`` (None: in time); only
        the first claim in time joins. A reward stamped past the deadline is late and
        leaves the decision to expire."""
        key = (domain, event_id)
        part = self._partition.get(domain)
        if part is not None:
            queue = self._queues[part]
            p = queue.get(key)
            if p is not None:
                if at is not None and at > p.deadline:
                    return Outcome.LATE, None
                del queue[key]
                self._n -= 1
                self._unindex(domain, event_id)
                self.finished.add(key, True, p.deadline)
                return Outcome.JOINED, p
        joined = self.finished.get(f"{domain}\x00{event_id}")
        if joined is None:
            return Outcome.UNKNOWN, None
        return (Outcome.DUPLICATE if joined else Outcome.LATE), None

    def was_decided(self, domain: str, event_id: str, at: float) -> bool:
        """Whether a context stamped ``at`` repeats a finished decision (remembered for
        the last ``remember`` finished joins): one that got its reward, or one whose
        window it falls in (an application re-sending it). Deciding it again would let a
        replayed reward join the new decision. An id reused after the window is new."""
        name = f"{domain}\x00{event_id}"
        joined = self.finished.get(name)
        if joined is None:
            return False
        deadline = self.finished.deadline(name)
        return joined or (deadline is not None and at <= deadline)

    def discard(self, domain: str, event_id: str) -> Pending | None:
        """Forget a pending decision that never reached its consumers (no reward can
        come for it); it leaves no memory of a finished join."""
        part = self._partition.get(domain)
        if part is None:
            return None
        p = self._queues[part].pop((domain, event_id), None)
        if p is not None:
            self._n -= 1
            self._unindex(domain, event_id)
            self._changes[domain] = self._changes.get(domain, 0) + 1
        return p

    def expire(self, until: Until) -> list[Pending]:
        """Remove and return every decision whose deadline is before its partition's
        ``until`` (its window has closed)."""
        out: list[Pending] = []
        for part, queue in self._queues.items():
            t = until_of(until, part)
            while queue:
                first = next(iter(queue.values()))
                if first.deadline >= t:
                    break
                out.append(self._pop_front(queue))
        return out

    def shed(self, share: float) -> list[Pending]:
        """Evict the oldest ``share`` of each partition's pending decisions (memory
        pressure)."""
        out: list[Pending] = []
        for queue in self._queues.values():
            n = int(len(queue) * share)
            out.extend(self._pop_front(queue) for _ in range(n))
        return out

    def count_by_domain(self) -> dict[str, int]:
        return {d: len(own) for d, own in self._by_domain.items()}

    def count_of(self, domain: str) -> int:
        own = self._by_domain.get(domain)
        return 0 if own is None else len(own)

    def items(self) -> list[Pending]:
        return [p for queue in self._queues.values() for p in queue.values()]

    def partitions(self) -> set[int]:
        """Partitions with decisions pending."""
        return {p for p, q in self._queues.items() if q}

    def drop(self, domains: set[str], partitions: set[int]) -> int:
        """Forget the pending decisions and finished joins of ``domains`` and the early
        rewards of those domains or ``partitions`` (released to another instance, which
        restores them from the checkpoint); returns how many decisions and rewards."""
        n = 0
        for queue in self._queues.values():
            keys = [k for k in queue if k[0] in domains]
            for k in keys:
                del queue[k]
                self._unindex(*k)
            self._n -= len(keys)
            n += len(keys)
        n += self.early.drop(domains, partitions)
        self.finished.drop(domains)
        for d in domains:
            self._partition.pop(d, None)
            self._changes.pop(d, None)
        return n

    def _pop_front(self, queue: OrderedDict[Key, Pending]) -> Pending:
        key, p = queue.popitem(last=False)
        self._n -= 1
        self._unindex(*key)
        self.finished.add(key, False, p.deadline)
        return p

    def _pop_of(self, domain: str) -> Pending:
        """Evict ``domain``'s oldest pending decision."""
        event_id = next(iter(self._by_domain[domain]))
        key = (domain, event_id)
        p = self._queues[self._partition[domain]].pop(key)
        self._n -= 1
        self._unindex(domain, event_id)
        self.finished.add(key, False, p.deadline)
        return p

    def _unindex(self, domain: str, event_id: str) -> None:
        own = self._by_domain[domain]
        del own[event_id]
        if not own:
            del self._by_domain[domain]
