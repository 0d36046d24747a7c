"""Which input partitions this instance holds, and where their state comes from.

Contexts and rewards are co-partitioned by domain, so partition ``p`` of both topics
carries a fixed set of domains, held here while the group assigns ``p``. A newly held
partition is restored from the local SQLite checkpoints or the compacted state topic
(another instance held it since, or this machine lost its disk), whichever is newer (by
the writer's epoch, then by offsets); its topics are read on from the offsets that state
reflects, and the decisions published since (:mod:`stream.kafka.decisionlog`) are served
again to the replayed contexts. Each held partition gets an *epoch* above every one seen:
a reader prefers its writes to an older owner's.

After a restore from the topic, domains can be ahead of their partition's restart offset
(see :mod:`stream.state.topic`): ``valid_from`` records, per domain, the offset from which
its messages are not yet in its state; earlier ones are skipped (checkpointed too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from confluent_kafka import OFFSET_BEGINNING

from policies.features import FeatureHasher
from stream.config import Settings
from stream.core.domains import Domains
from stream.core.join import PendingJoins
from stream.errors import NewerFormat
from stream.kafka.codec import Decision
from stream.kafka.decisionlog import DecisionLog
from stream.state.delta import Chain
from stream.state.records import Snapshot
from stream.state.snapshot import restore
from stream.state.store import CheckpointError, CheckpointStore, CorruptCheckpoint
from stream.state.topic import Head, Offsets
from stream.state.topicreader import PartitionPlan, StateRecords, read_state_topic

log = logging.getLogger(__name__)

TP = tuple[str, int]
Signature = tuple[int, ...]


class Ownership:
    """The held partitions, their offsets, and restore / release of their domains."""

    def __init__(
        self,
        settings: Settings,
        domains: Domains,
        joins: PendingJoins,
        hasher: FeatureHasher,
        store: CheckpointStore,
        on_release: Callable[[set[str], set[int]], None] | None = None,
        decision_log: DecisionLog | None = None,
    ) -> None:
        self.settings = settings
        self.domains = domains
        self.joins = joins
        self.hasher = hasher
        self.store = store
        self.on_release = on_release
        self.decision_log = decision_log
        self.topics = (settings.topic_contexts, settings.topic_rewards)
        self.held: set[int] = set()
        # Next offset to read per input partition as of the state in memory: set by a
        # restore, advanced by every checkpoint.
        self.offsets: dict[TP, int] = {}
        # (topic, partition) -> domain -> offset from which its messages are still to apply.
        self.valid_from: dict[TP, dict[str, int]] = {}
        # Per held partition: its epoch, and its decisions-topic mark (every decision made
        # after ``offsets`` is at or after it).
        self.epochs: dict[int, int] = {}
        self.marks: dict[int, int] = {}
        # Per partition being replayed after a restore: the decisions published for its
        # contexts since its mark, by context offset (kept until the last is passed).
        self.replays: dict[int, dict[int, Decision]] = {}
        # domain -> signature() as of its last record on the state topic.
        self.published: dict[str, Signature] = {}
        # domain -> its chain of records on the state topic, as this instance wrote it
        self.chains: dict[str, Chain] = {}
        # domain -> (its partition, its newest record on the state topic; None: it has one,
        # which one is unknown after a failed publish)
        self.heads: dict[str, tuple[int, Head | None]] = {}
        self.restored_from_topic = 0
        self.restored_from_local = 0
        self.restored_empty = 0  # assigned with no state anywhere: it starts from nothing
        self.restore_s = 0.0  # duration of the last restore

    # -- assignment ---------------------------------------------------------------------
    def assign(self, numbers: set[int]) -> None:
        """Hold exactly ``numbers``: release the others, restore the new ones."""
        gone = self.held - numbers
        if gone:
            self.release(gone)
        new = numbers - self.held
        if new:
            start = time.monotonic()
            self._restore(new)
            self.restore_s = time.monotonic() - start
        self.held = set(numbers)

    def release(self, partitions: set[int]) -> None:
        """Forget the state of ``partitions`` (checkpointed first by the caller)."""
        names = self.domains.release(partitions)
        early = {e.domain for e in self.joins.early.items() if e.partition in partitions}
        dropped = self.joins.drop(names, partitions)
        for p in partitions:
            for t in self.topics:
                self.offsets.pop((t, p), None)
                self.valid_from.pop((t, p), None)
            for table in (self.epochs, self.marks, self.replays):
                table.pop(p, None)
        for n in names | early | {d for d, (p, _) in self.heads.items() if p in partitions}:
            self.published.pop(n, None)
            self.chains.pop(n, None)
            self.heads.pop(n, None)
        if self.on_release is not None:
            self.on_release(names, partitions)
        self.held -= partitions
        log.info(
            "released partitions %s: %d domains, %d pending joins and early rewards",
            sorted(partitions),
            len(names),
            dropped,
        )

    def release_all(self) -> None:
        if self.held:
            self.release(set(self.held))

    def _restore(self, partitions: set[int]) -> None:
        local = self._local(partitions)
        records = self._read_topic()
        ctx, rew = self.topics
        for p in sorted(partitions):
            snap = local.get(p)
            mine = self._snap_offsets(snap, p) if snap is not None else None
            mine_epoch = snap.meta.epochs.get(p, 0) if snap is not None else 0
            plan = records.plan(p)
            seen = max(mine_epoch, plan.epoch if plan is not None else 0)
            self.epochs[p] = max(seen + 1, int(time.time() * 1000))
            if plan is not None and (mine is None or _better(plan, mine_epoch, mine)):
                self._from_topic(p, plan)
            elif snap is not None and mine is not None:
                names = restore(snap, self.domains, self.joins, self.hasher, partitions={p})
                # The topic's records of the partition are another lineage's: the next
                # checkpoint replaces them (their links retired) or deletes them.
                for rec in plan.records if plan is not None else []:
                    self.heads[rec.domain] = (p, rec.head)
                self.offsets[(ctx, p)], self.offsets[(rew, p)] = mine
                for t in self.topics:
                    table = snap.meta.valid_from.get(f"{t}|{p}")
                    if table:
                        self.valid_from[(t, p)] = dict(table)
                self.marks[p] = snap.meta.marks.get(p, OFFSET_BEGINNING)
                self.restored_from_local += 1
                log.info(
                    "partition %d restored from local checkpoint %d: %d domains, offsets %s",
                    p,
                    snap.version,
                    len(names),
                    mine,
                )
            else:
                self.marks[p] = OFFSET_BEGINNING  # nothing held: any decision may be replayed
                self.restored_empty += 1
            self._load_replay(p)

    def _from_topic(self, p: int, plan: PartitionPlan) -> None:
        ctx, rew = self.topics
        for rec in plan.records:
            restore(rec.snapshot, self.domains, self.joins, self.hasher)
            self.heads[rec.domain] = (p, rec.head)
        self.offsets[(ctx, p)], self.offsets[(rew, p)] = plan.start
        self.valid_from[(ctx, p)] = {d: v[0] for d, v in plan.valid_from.items()}
        self.valid_from[(rew, p)] = {d: v[1] for d, v in plan.valid_from.items()}
        self.marks[p] = plan.mark
        self.restored_from_topic += 1
        log.info(
            "partition %d restored from the state topic: %d domains, from offsets %s",
            p,
            len(plan.records),
            plan.start,
        )

    def _load_replay(self, p: int) -> None:
        """The decisions published since the restored state's mark, to serve again."""
        if self.decision_log is None:
            return
        first = max(0, self.offsets.get((self.topics[0], p), OFFSET_BEGINNING))
        try:
            decisions = self.decision_log.replay(
                p, self.marks.get(p, OFFSET_BEGINNING), first, self.settings.max_pending
            )
        except Exception as exc:  # noqa: BLE001 - the partition cannot be held without them
            raise CheckpointError(f"cannot read the decisions of partition {p}: {exc}") from exc
        if decisions:
            self.replays[p] = decisions
            log.info(
                "partition %d: %d decisions published since its checkpoint are served again "
                "to their replayed contexts",
                p,
                len(decisions),
            )

    def _snap_offsets(self, snap: Snapshot, p: int) -> Offsets:
        ctx, rew = self.topics
        return (
            snap.offsets.get((ctx, p), OFFSET_BEGINNING),
            snap.offsets.get((rew, p), OFFSET_BEGINNING),
        )

    def _local(self, partitions: set[int]) -> dict[int, Snapshot]:
        """The newest valid local checkpoint that holds each partition."""
        found: dict[int, Snapshot] = {}
        try:
            versions = self.store.versions()
        except CheckpointError as exc:
            log.error("%s: restoring from the state topic only", exc)
            return found
        ctx = self.topics[0]
        for info in versions:
            todo = partitions - found.keys()
            if not todo:
                break
            try:
                snap = self.store.load(info.version)
            except CorruptCheckpoint as exc:
                log.error("%s (%s); trying the previous version", exc, self.store.path)
                continue
            except CheckpointError as exc:  # pruned by a write that finished meanwhile
                log.warning("%s; trying the previous version", exc)
                continue
            for p in todo:
                if (ctx, p) in snap.offsets:
                    found[p] = snap
        return found

    def _read_topic(self) -> StateRecords:
        """The state topic, read whole; raises when it cannot be: a partition restored
        without it could be behind another owner's state, and would then overwrite it."""
        for attempt in range(3):
            try:
                return read_state_topic(self.settings)
            except NewerFormat:
                raise  # no retry reads it: the operator's one line (docs/upgrading.md)
            except Exception as exc:  # noqa: BLE001 - any failure: retry, then stop
                topic = self.settings.topic_state
                log.error(
                    "cannot read the state topic %s (attempt %d of 3): %s", topic, attempt + 1, exc
                )
                if attempt < 2:  # a topic just created may not be known to every broker yet
                    time.sleep(1.0 + attempt)
        raise CheckpointError(
            f"the state topic {self.settings.topic_state} cannot be read: the assigned "
            "partitions cannot be restored safely"
        )

    # -- the message path ---------------------------------------------------------------
    def already_applied(self, topic: str, partition: int, domain: str, offset: int) -> bool:
        """Whether a replayed message is already reflected in its domain's restored state."""
        table = self.valid_from.get((topic, partition))
        if not table:
            return False
        start = table.get(domain)
        return start is not None and offset < start

    def published_decision(self, partition: int, offset: int) -> Decision | None:
        """The decision already published for the replayed context at ``offset``, taken
        (None: none was)."""
        table = self.replays.get(partition)
        return None if table is None else table.pop(offset, None)

    # -- checkpoints --------------------------------------------------------------------
    def advance(self, positions: dict[TP, int], decisions_end: Callable[[int], int | None]) -> None:
        """Record the consumer's positions (next offsets) as the state's offsets, and each
        partition's decisions mark: ``decisions_end(p)`` (the decisions partition's end,
        read before any later decision is made) once no replay is still to come.

        A held partition not read yet keeps its restored offset, or "from the beginning"
        when it never had one: its state holds nothing of it.
        """
        for tp, off in positions.items():
            if off >= 0:
                self.offsets[tp] = off
        for p in self.held:
            for t in self.topics:
                self.offsets.setdefault((t, p), OFFSET_BEGINNING)
        for tp, table in list(self.valid_from.items()):
            pos = self.offsets.get(tp, OFFSET_BEGINNING)
            if all(pos >= o for o in table.values()):
                del self.valid_from[tp]  # the replay is past every restored domain
        ctx = self.topics[0]
        for p in self.held:
            replay = self.replays.get(p)
            if replay and self.offsets.get((ctx, p), OFFSET_BEGINNING) <= max(replay):
                continue  # contexts decided before the restore are still to come: keep
            self.replays.pop(p, None)
            mark = decisions_end(p)
            if mark is not None:  # else the older mark stands: still at or below
                self.marks[p] = mark

    def valid_from_meta(self) -> dict[str, dict[str, int]]:
        return {f"{t}|{p}": dict(table) for (t, p), table in self.valid_from.items()}

    def signature(self, name: str) -> Signature:
        """Changes whenever anything a record of the domain holds does."""
        st = self.domains.states.get(name)
        own = () if st is None else self.domains.signature(st)
        return (*own, self.joins.changes(name))

    def publish_plan(
        self,
    ) -> tuple[dict[str, int], dict[int, Offsets], dict[str, Offsets], set[str]]:
        """What the state topic needs now: changed domains (-> partition), each held
        partition's offsets, the offsets of each changed domain's state (ahead of its
        partition's mid-replay), and domains gone from this instance's state whose
        records are to be deleted (early rewards only, all settled)."""
        ctx, rew = self.topics
        changed = {
            name: st.partition
            for name, st in self.domains.states.items()
            if st.partition in self.held and self.published.get(name) != self.signature(name)
        }
        early = {
            e.domain: e.partition for e in self.joins.early.items() if e.partition in self.held
        }
        for name, p in early.items():
            if name not in self.domains.states and self.published.get(name) != self.signature(name):
                changed[name] = p
        gone = {
            name
            for name, (p, _) in self.heads.items()
            if p in self.held and name not in self.domains.states and name not in early
        }
        parts = {
            p: (
                self.offsets.get((ctx, p), OFFSET_BEGINNING),
                self.offsets.get((rew, p), OFFSET_BEGINNING),
            )
            for p in self.held
        }
        ahead: dict[str, Offsets] = {}
        for name, p in changed.items():
            if p in parts:
                c = self.valid_from.get((ctx, p), {}).get(name, parts[p][0])
                r = self.valid_from.get((rew, p), {}).get(name, parts[p][1])
                ahead[name] = (max(c, parts[p][0]), max(r, parts[p][1]))
        return changed, parts, ahead, gone

    def heads_of(self, partition: int, without: set[str] | None = None) -> dict[str, Head]:
        """The newest record of every domain of ``partition`` on the topic, where known."""
        skip = without or set()
        return {
            d: h
            for d, (p, h) in self.heads.items()
            if p == partition and h is not None and d not in skip
        }

    def mark_published(
        self,
        signatures: Mapping[str, Signature],
        chains: Mapping[str, Chain | None],
        partitions: Mapping[str, int],
        gone: set[str] | None = None,
    ) -> None:
        """A publish is over: ``signatures`` of the domains it holds for sure, ``chains``
        of every domain it sent (None: what the topic holds is unknown)."""
        self.published.update(signatures)
        early = self.joins.early.domains()
        for name, chain in chains.items():
            if name not in self.domains.states and name not in early:
                self.chains.pop(name, None)  # released meanwhile
                self.heads.pop(name, None)
            elif chain is None:
                # What the topic holds of it is unknown: its signature was not updated, so
                # it goes again; until then a marker does not vouch for it.
                self.chains.pop(name, None)
                self.heads[name] = (partitions[name], None)
            else:
                self.chains[name] = chain
                self.heads[name] = (partitions[name], (chain.base, chain.seq))
        for name in gone or ():
            self.heads.pop(name, None)
            self.published.pop(name, None)
            self.chains.pop(name, None)


def _better(plan: PartitionPlan, epoch: int, offsets: Offsets) -> bool:
    """Whether to restore from the topic rather than a local checkpoint. Both are exact;
    a complete plan when it is newer (a later owner's, or the same owner's further on),
    an incomplete one when it still replays less than the local checkpoint would."""
    if not plan.complete:
        return plan.start[0] >= offsets[0] and plan.start[1] >= offsets[1]
    if plan.epoch != epoch:
        return plan.epoch > epoch
    return plan.newest[0] > offsets[0] or plan.newest[1] > offsets[1]
