"""Injected faults at named points of the service, to prove that no failure loses input.

``RL_FAILPOINTS=decode:0.001,learn:0.05`` makes each named point raise
:class:`InjectedFault` with that probability each time it is passed. The draws come from
one generator seeded by ``RL_FAILPOINT_SEED`` (default ``RL_SEED``), so a run is
reproducible; a restart loop gives each start its own seed. Off by default: the service
then holds ``None`` and tests it once per call site, so the hot path pays nothing.

Points (where each is passed):

- ``decode``: each consumed message, before it is decoded;
- ``decide``: each domain's batch of contexts, before its policies choose;
- ``emit``: each decision, before it is produced;
- ``join``: each reward, before it is joined to its decision;
- ``learn``: each domain's batch of rewards, before its policies learn;
- ``checkpoint_write``: each checkpoint, in the background writer before SQLite;
- ``state_publish``: each checkpoint's state-topic publish;
- ``commit``: each offset commit after a checkpoint;
- ``revoke``: each partition revoke, before its checkpoint.
"""

from __future__ import annotations

import random

from stream.errors import StreamError

POINTS = (
    "decode",
    "decide",
    "emit",
    "join",
    "learn",
    "checkpoint_write",
    "state_publish",
    "commit",
    "revoke",
)


class InjectedFault(StreamError):
    """Raised by an armed failpoint; never by the product's own code."""


def parse(spec: str) -> dict[str, float]:
    """``"name:p,name:p"`` -> {name: p}; unknown names and bad probabilities raise
    ValueError (settings validation names RL_FAILPOINTS)."""
    out: dict[str, float] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, prob = item.partition(":")
        name = name.strip().lower()
        if name not in POINTS:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(POINTS)}")
        try:
            p = float(prob) if sep else 1.0
        except ValueError:
            raise ValueError(f"{item!r}: probability is not a number") from None
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{item!r}: probability must lie in 0..1")
        out[name] = p
    return out


class Failpoints:
    """The armed points and their seeded draws; ``hits`` counts what was injected."""

    def __init__(self, probabilities: dict[str, float], seed: int) -> None:
        self.probabilities = dict(probabilities)
        self.hits: dict[str, int] = dict.fromkeys(self.probabilities, 0)
        self._rng = random.Random(seed)

    @classmethod
    def from_spec(cls, spec: str, seed: int) -> Failpoints | None:
        """None when nothing is armed (the service then skips every check)."""
        probabilities = parse(spec)
        return cls(probabilities, seed) if probabilities else None

    def check(self, name: str) -> None:
        """Raise :class:`InjectedFault` at ``name`` with its probability."""
        p = self.probabilities.get(name)
        if p is not None and self._rng.random() < p:
            self.hits[name] += 1
            raise InjectedFault(f"failpoint {name!r} injected a fault")


def check(failpoints: Failpoints | None, name: str) -> None:
    """For call sites off the hot path: a no-op when failpoints are off."""
    if failpoints is not None:
        failpoints.check(name)
