"""Property: a restore from the compacted state topic is exact, whatever befell the topic.

Hypothesis drives random histories of partition 0, whose one or two domains hold linucb
states that change between checkpoints (a row or two: a delta; every row: a new base).
Successive owners (each restoring from the topic first, under a higher epoch) checkpoint
through the real :class:`StatePublisher` onto a simulated compacted topic; deposed owners
write late under their older epoch; publishes are cut between their records and their
tombstones and markers; records and markers are lost or damaged (a flipped bit) on the
way; the topic is compacted, with or without its tombstones. Every restore (each
handover, and one at the end) reads the topic through :class:`StateRecords` and its plan
must:

* restore each domain to exactly a state some checkpoint published (arrays, dtypes, meta);
* hold that domain's true state at its ``valid_from``: the restore neither skips a message
  the state lacks nor applies one twice;
* never take a deposed owner's late write over a newer owner's still on the topic;
* start at or before every ``valid_from``, and where no domain it leaves out had a state
  yet (from the beginning when the marker lists a domain whose record is gone);
* replay decisions from at or before the decisions mark of its start;
* be None only when nothing of the partition survived.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
from confluent_kafka import OFFSET_BEGINNING
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

import stream.state.publisher as publisher_module
import stream.state.topic as topic_module
from policies.base import Feedback, Policy
from policies.registry import create_policy
from stream.config import load_settings
from stream.core.domain import DomainInfo
from stream.errors import CorruptCheckpoint
from stream.state.delta import Chain, is_delta_key
from stream.state.publisher import PartitionMark, StatePublisher
from stream.state.records import Snapshot, SnapshotMeta
from stream.state.topic import Head, Offsets, decode_domain, decode_marker, marker_key
from stream.state.topicreader import PartitionPlan, StateRecords
from tests.builders import context_batch

TOPICS = ("ctx", "rew")
NF = 16  # a 2 KB inverse per action: one action's change is worth a delta, all are not
ACTIONS = [f"a{i}" for i in range(12)]
DOMAINS = ("d", "e")  # "d" from the first point on, "e" from a random one
BEGIN = -1  # the point "before anything": offsets and mark OFFSET_BEGINNING

Entry = tuple[str, bytes | None, int]  # key, value (None: a tombstone), writer's epoch
State = tuple[dict[str, Any], dict[str, NDArray[Any]]]

# Fates of a record on its way to the topic; the shrinker leans to 0 (it lands intact).
LOST, DAMAGED = 14, 15
FATE = st.integers(0, DAMAGED)
CUT = 7  # of st.integers(0, 7): a publish stops after its domain records
OPS = st.sampled_from(["checkpoint"] * 4 + ["handover", "zombie", "compact"])
# A domain's change from one point to the next, drawn from 0..ALL: below ONE none, below
# NEW one action learns (a delta), below ALL a new action (every array grows), ALL every
# action learns (a delta would not pay: a new base).
ONE, NEW, ALL = 2, 5, 7


# -- the input partition: a fixed timeline every owner reads alike ------------------------
def offsets_at(t: int) -> Offsets:
    """(contexts, rewards) offsets of point ``t``; unequal steps, so a mixed-up component
    or a mixed-up point shows."""
    return (OFFSET_BEGINNING, OFFSET_BEGINNING) if t == BEGIN else (10 + 7 * t, 3 + 2 * t)


def mark_at(t: int) -> int:
    """The decisions topic's end at point ``t``."""
    return OFFSET_BEGINNING if t == BEGIN else 1 + 5 * t


def point_of(o: Offsets) -> int:
    if o == (OFFSET_BEGINNING, OFFSET_BEGINNING):
        return BEGIN
    t = (o[0] - 10) // 7
    assert t >= 0 and offsets_at(t) == o, f"offsets {o} are no checkpoint's"
    return t


def learn(p: Policy, actions: list[str], seed: int) -> None:
    """One reward for each of ``actions`` (and only them)."""
    rng = np.random.default_rng(seed)
    k = len(actions)
    b = context_batch(
        rows=rng.random((k * k, NF)), candidates=actions, keys=[str(i) for i in range(k)]
    )
    rows = np.arange(k) * k + np.arange(k)
    p.learn(Feedback(b, rows, rng.random(k), np.full(k, 1.0 / k)))


class Timeline:
    """Each domain's true state at every point, drawn as owners first read that far.
    Processing is deterministic: whoever reads the partition to a point has these states."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.policies: dict[str, Policy] = {}
        self.states: dict[str, list[State]] = {d: [] for d in DOMAINS}
        self.points: list[dict[str, int]] = []  # point -> domain -> its state's index
        self.seed = 0

    def version(self, d: str, t: int) -> int | None:
        """The index of ``d``'s state at point ``t`` (None: no state yet)."""
        if t == BEGIN:
            return None
        while len(self.points) <= t:
            self._step()
        return self.points[t].get(d)

    def _step(self) -> None:
        now = dict(self.points[-1]) if self.points else {}
        for d in DOMAINS:
            first = d == "d" and not self.points
            kind = ALL if first else self.data.draw(st.integers(0, ALL))
            if kind < ONE:  # no message of d
                continue
            self.seed += 1
            p = self.policies.get(d)
            if p is None:
                p = self.policies[d] = create_policy("linucb", NF, seed=self.seed)
                kind = ALL
            if kind < NEW:  # one action learns: a delta of a row
                learn(p, [ACTIONS[self.seed % len(ACTIONS)]], self.seed)
            elif kind < ALL:  # a new action: every array grows a row
                learn(p, [f"n{self.seed}"], self.seed)
            else:
                learn(p, ACTIONS, self.seed)
            meta, arrays = p.state_dict()
            self.states[d].append((meta, {k: a.copy() for k, a in arrays.items()}))
            now[d] = len(self.states[d]) - 1
        self.points.append(now)

    def find(self, d: str, state: State) -> int | None:
        """The index of ``d``'s state equal to ``state`` (same arrays, dtypes and meta)."""
        meta, arrays = state
        for i, (meta0, arrays0) in enumerate(self.states[d]):
            if (
                meta == meta0
                and arrays.keys() == arrays0.keys()
                and all(
                    arrays[k].dtype == a.dtype and np.array_equal(arrays[k], a)
                    for k, a in arrays0.items()
                )
            ):
                return i
        return None


# -- the state topic and its writers -------------------------------------------------------
class Capture(StatePublisher):
    """The real publisher, its produce-and-wait replaced by keeping each batch."""

    batches: list[list[Entry]]

    def _send(
        self,
        items: Iterable[tuple[str, bytes | None]],
        epoch: Mapping[str, int],
        deadline: float,
        cancel: threading.Event | None,
        paced: bool = False,
    ) -> None:
        # ``epoch`` fills in as the record generator runs: read each key's after its item.
        self.batches.append([(k, v, epoch.get(k, 0)) for k, v in items])


@functools.cache
def publisher() -> Capture:
    return Capture(load_settings())  # one producer, never used: _send is replaced


@contextlib.contextmanager
def steady() -> Iterator[None]:
    """Base ids and record clocks alike in every run: a failing example replays byte for
    byte (the modules' own names are patched, not the standard library's)."""
    n = itertools.count()
    ids = mock.Mock(wraps=uuid)
    ids.uuid4.side_effect = lambda: uuid.UUID(bytes=hashlib.sha256(b"%d" % next(n)).digest()[:16])
    clock = mock.Mock(wraps=time)
    clock.time.return_value = 1.7e9
    with (
        mock.patch.object(publisher_module, "uuid", ids),
        mock.patch.object(topic_module, "time", clock),
    ):
        yield


@dataclass
class Owner:
    """What :class:`Ownership` keeps of partition 0 between checkpoints."""

    epoch: int
    at: int = BEGIN  # the point its partition offsets are at
    ahead: dict[str, int] = field(default_factory=dict)  # restored domain -> its valid_from
    published: dict[str, int] = field(default_factory=dict)  # domain -> state last landed
    chains: dict[str, Chain] = field(default_factory=dict)
    heads: dict[str, Head] = field(default_factory=dict)


@dataclass
class World:
    timeline: Timeline
    log: list[Entry] = field(default_factory=list)  # the topic partition, oldest first
    owners: list[Owner] = field(default_factory=list)  # the last one holds the partition
    sent: dict[str, set[int]] = field(default_factory=lambda: {d: set() for d in DOMAINS})

    def records(self) -> StateRecords:
        records = StateRecords({}, TOPICS)
        for key, value, epoch in self.log:
            records.read(key, value, epoch)
        return records

    def compact(self, drop_tombstones: bool) -> None:
        """Kafka's cleaner: the last write of each key stays, whatever its epoch."""
        last = {key: i for i, (key, _, _) in enumerate(self.log)}
        self.log = [
            e
            for i, e in enumerate(self.log)
            if last[e[0]] == i and not (drop_tombstones and e[1] is None)
        ]


def checkpoint(world: World, owner: Owner, data: st.DataObject) -> None:
    """``owner`` reads on and publishes, as Checkpointer._submit does, faults and all."""
    tl = world.timeline
    owner.at += data.draw(st.integers(1, 3))
    # Restored domains ahead of the partition stay at their point until it is passed.
    owner.ahead = {d: t for d, t in owner.ahead.items() if t > owner.at}
    states: dict[str, State] = {}
    records: dict[str, tuple[int, Offsets]] = {}
    landed: dict[str, int] = {}
    for d in DOMAINS:
        t = max(owner.ahead.get(d, BEGIN), owner.at)
        v = tl.version(d, t)
        if v is None:
            continue
        states[d] = tl.states[d][v]
        if owner.published.get(d) != v:
            records[d] = (0, offsets_at(t))
            landed[d] = v
            world.sent[d].add(v)
    meta = SnapshotMeta(NF, 0, {d: DomainInfo(partition=0) for d in states})
    snap = Snapshot({d: {"served": s} for d, s in states.items()}, meta=meta)
    mark = PartitionMark(offsets_at(owner.at), owner.epoch, mark_at(owner.at), dict(owner.heads))
    chains = {d: c for d in records if (c := owner.chains.get(d)) is not None}
    pub = publisher()
    pub.batches = []
    made = pub.publish(snap, records, {0: mark}, 1.0, chains)
    first, second = pub.batches
    cut = data.draw(st.integers(0, CUT)) == CUT  # the writer died, or its markers failed
    for key, value, epoch in first if cut else first + second:
        fate = data.draw(FATE)
        if fate == LOST:  # acknowledged, yet gone: what a marker must not vouch for
            continue
        if fate == DAMAGED and value is not None:
            where = data.draw(st.integers(0, 1 << 20)) % len(value)
            raw = bytearray(value)
            raw[where] ^= 1 << data.draw(st.integers(0, 7))
            value = bytes(raw)
        world.log.append((key, value, epoch))
    if cut:
        # As after a failed publish: what the topic holds of these domains is unknown,
        # their signatures stay, so the next checkpoint sends them again as bases.
        for d in records:
            owner.chains.pop(d, None)
            owner.heads.pop(d, None)
    else:
        owner.published.update(landed)
        owner.chains.update(made)
        owner.heads.update((d, (c.base, c.seq)) for d, c in made.items())


def survivors(values: Mapping[str, bytes]) -> list[str]:
    """Keys of readable records of partition 0: its marker, its domains' bases."""
    found = []
    for key, value in values.items():
        if is_delta_key(key):
            continue
        try:
            if key == marker_key(0):
                ok = decode_marker(value).partition == 0
            else:
                rec = decode_domain(value, TOPICS)
                ok = (rec.partition, rec.domain, rec.seq) == (0, key, 0)
        except CorruptCheckpoint:
            continue
        if ok:
            found.append(key)
    return found


def check(world: World, records: StateRecords, plan: PartitionPlan | None) -> None:
    tl = world.timeline
    if plan is None:
        assert survivors(records.values) == []
        return
    # A deposed owner's late write never hides a newer owner's still on the topic.
    newest: dict[str, int] = {}
    for key, _, epoch in world.log:
        newest[key] = max(epoch, newest.get(key, 0))
    for rec in plan.records:
        assert rec.epoch >= newest[rec.domain], f"{rec.domain}: an older owner's record"
    start = point_of(plan.start)
    restored = {r.domain for r in plan.records}
    assert len(restored) == len(plan.records) and plan.valid_from.keys() == restored
    for rec in plan.records:
        d = rec.domain
        v = tl.find(d, rec.snapshot.domains[d]["served"])
        assert v is not None, f"{d}: restored a state no checkpoint had"
        assert v in world.sent[d], f"{d}: restored a state never published"
        assert tl.version(d, point_of(rec.offsets)) == v, f"{d}: its record's offsets"
        # Messages before valid_from are skipped, later ones applied: exact only where
        # the restored state is the domain's true state.
        valid = point_of(plan.valid_from[d])
        assert tl.version(d, valid) == v, f"{d}: valid from {plan.valid_from[d]}"
        assert start <= valid
    for d in set(DOMAINS) - restored:
        # Read from ``start``, a domain left out must have had no state before it.
        assert tl.version(d, start) is None, f"{d}: not restored, yet had a state at {start}"
    raw = records.values.get(marker_key(0))
    try:
        marker = decode_marker(raw) if raw is not None else None
    except CorruptCheckpoint:
        marker = None
    assert marker is None or marker.epoch >= newest[marker_key(0)], "an older owner's marker"
    heads = marker.heads if marker is not None else None
    if heads and set(heads) - restored:
        assert plan.start == (OFFSET_BEGINNING, OFFSET_BEGINNING)
    assert plan.mark <= mark_at(start), f"decisions replayed from {plan.mark}"


def restore(world: World) -> PartitionPlan | None:
    records = world.records()
    plan = records.plan(0)
    check(world, records, plan)
    return plan


def handover(world: World) -> None:
    """A new owner, under a higher epoch, restores the partition from the topic."""
    plan = restore(world)
    owner = Owner(epoch=1 + max((o.epoch for o in world.owners), default=0))
    if plan is not None:
        owner.at = point_of(plan.start)
        owner.ahead = {d: point_of(o) for d, o in plan.valid_from.items()}
        owner.heads = {r.domain: r.head for r in plan.records}
    world.owners.append(owner)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(ops=st.lists(OPS, min_size=1, max_size=20), data=st.data())
def test_every_restore_is_a_published_state_read_on_from_its_own_offsets(
    ops: list[str], data: st.DataObject
) -> None:
    world = World(Timeline(data))
    with steady():
        handover(world)
        for op in ops:
            if op == "checkpoint":
                checkpoint(world, world.owners[-1], data)
            elif op == "handover":
                handover(world)
            elif op == "zombie" and len(world.owners) > 1:
                # A deposed owner, unaware yet, writes under its older epoch.
                zombie = world.owners[data.draw(st.integers(0, len(world.owners) - 2))]
                checkpoint(world, zombie, data)
            elif op == "compact":
                world.compact(drop_tombstones=data.draw(st.booleans()))
        restore(world)
