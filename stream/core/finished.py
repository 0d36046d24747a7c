"""The memory of finished joins: which decisions got their reward or expired, lately.

It tells a duplicate reward (already joined) and a late one (already expired) apart from a
reward for an event never seen, and keeps a context whose decision was joined from being
decided again. It holds the last ``remember`` finishes, and it is checkpointed with their
decisions' deadlines, so it survives a restart or a move for as long as the window lasts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.core.windows import Changes, Key


@dataclass(frozen=True, slots=True)
class Finished:
    """A remembered finished join, as checkpoints keep it."""

    domain: str
    event_id: str
    joined: bool  # True: it got its reward; False: it expired
    deadline: float  # its decision's deadline: the memory matters until then


class FinishedCopy:
    """The memory as of a snapshot, listed later (off the loop thread)."""

    def __init__(self, names: dict[str, int], ring: Any, seqs: Any, deadlines: Any) -> None:
        self._names, self._ring, self._seqs, self._deadlines = names, ring, seqs, deadlines

    def items(self) -> list[Finished]:
        out = []
        for i in np.argsort(self._seqs, kind="stable"):
            name = self._ring[i]
            v = None if name is None else self._names.get(name)
            if v is None or v >> 1 != self._seqs[i]:
                continue  # forgotten, or renewed since: its newer slot lists it
            domain, event_id = name.split("\x00", 1)
            out.append(Finished(domain, event_id, bool(v & 1), float(self._deadlines[i])))
        return out


def name_of(key: Key) -> str:
    """A finished join's name: domains never hold a NUL, so the first one splits it."""
    return f"{key[0]}\x00{key[1]}"


class FinishedJoins:
    """The last ``remember`` finished joins."""

    def __init__(self, remember: int, changes: Changes) -> None:
        self.remember = remember
        self._changes = changes
        # "domain NUL event_id" -> (sequence number << 1 | joined); the ring holds the last
        # ``remember`` names in finishing order, their sequence numbers and deadlines beside
        # it. str keys and int values keep the dict out of the cyclic collector's sight,
        # and it does not traverse a numpy array.
        self._names: dict[str, int] = {}
        self._ring: np.ndarray[Any, np.dtype[np.object_]] = np.full(remember, None)
        self._seqs = np.full(remember, -1, dtype=np.int64)
        self._deadlines = np.zeros(remember, dtype=np.float64)
        self._n = 0

    def __len__(self) -> int:
        return len(self._names)

    def __bool__(self) -> bool:
        return bool(self._names)

    def get(self, name: str) -> bool | None:
        """True: joined; False: expired; None: not remembered."""
        v = self._names.get(name)
        return None if v is None else bool(v & 1)

    def deadline(self, name: str) -> float | None:
        """The remembered decision's deadline (None: not remembered)."""
        v = self._names.get(name)
        return None if v is None else float(self._deadlines[(v >> 1) % self.remember])

    def add(self, key: Key, joined: bool, deadline: float) -> None:
        self._changes[key[0]] = self._changes.get(key[0], 0) + 1
        if not self.remember:
            return
        n, ring, names = self._n, self._ring, self._names
        name = f"{key[0]}\x00{key[1]}"  # as name_of(key), inline: once per decision
        slot = n % self.remember
        old = ring[slot]  # finished ``remember`` finishes ago: forgotten, unless since renewed
        if old is not None and names.get(old, -1) >> 1 == n - self.remember:
            del names[old]
        ring[slot] = name
        self._seqs[slot] = n
        self._deadlines[slot] = deadline
        names[name] = n << 1 | joined
        self._n = n + 1

    def discard(self, name: str) -> None:
        """Forget one (its event id is decided afresh)."""
        self._names.pop(name, None)

    def copy(self) -> FinishedCopy:
        return FinishedCopy(
            dict(self._names), self._ring.copy(), self._seqs.copy(), self._deadlines.copy()
        )

    def restore(self, items: list[Finished]) -> None:
        """Remember finished joins from a checkpoint, oldest first."""
        for f in items:
            self.add((f.domain, f.event_id), f.joined, f.deadline)

    def clear(self) -> int:
        """Forget everything (memory pressure); returns how many were remembered."""
        n = len(self._names)
        for name in self._names:
            d = name.split("\x00", 1)[0]
            self._changes[d] = self._changes.get(d, 0) + 1
        self._names.clear()
        self._ring[:] = None
        self._seqs[:] = -1
        return n

    def drop(self, domains: set[str]) -> None:
        """Forget the joins of released domains (their checkpoint brings them back)."""
        for name in [k for k in self._names if k.split("\x00", 1)[0] in domains]:
            del self._names[name]
