"""Which input partitions this instance holds, and where their state comes from.

Contexts and rewards are co-partitioned by domain, so partition number ``p`` of both
topics carries a fixed set of domains; this instance holds that state while the group
assigns it ``p``. On assignment each newly held partition is restored from the newest of
two sources: the local SQLite checkpoints, or the compacted state topic (another instance
held it since, or this machine lost its disk); each topic partition is then read from the
offsets that state reflects. Partitions assigned elsewhere are released.

After a restore from the topic, domains can be ahead of their partition's restart offset
(see :mod:`stream.state.topic`): ``valid_from`` records, per domain, the offset from which
its messages are not yet in its state, and earlier ones are skipped. It is checkpointed
too, so a checkpoint taken during such a replay is just as exact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from policies.features import FeatureHasher
from stream.config import Settings
from stream.domains import Domains
from stream.join import PendingJoins
from stream.state.delta import Chain
from stream.state.snapshot import restore
from stream.state.store import CheckpointError, CheckpointStore, CorruptCheckpoint, Snapshot
from stream.state.topic import Offsets, StateRecords, read_state_topic

log = logging.getLogger(__name__)

TP = tuple[str, int]


class Ownership:
    """The held partitions, their offsets, and restore / release of their domains."""

    def __init__(
        self,
        settings: Settings,
        domains: Domains,
        joins: PendingJoins,
        hasher: FeatureHasher,
        store: CheckpointStore,
        on_release: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.domains = domains
        self.joins = joins
        self.hasher = hasher
        self.store = store
        self.on_release = on_release
        self.topics = (settings.topic_contexts, settings.topic_rewards)
        self.held: set[int] = set()
        # Next offset to read per input partition as of the state in memory: set by a
        # restore, advanced by every checkpoint.
        self.offsets: dict[TP, int] = {}
        # (topic, partition) -> domain -> offset from which its messages are still to apply.
        self.valid_from: dict[TP, dict[str, int]] = {}
        # domain -> Domains.signature() as of its last record on the state topic.
        self.published: dict[str, tuple[int, ...]] = {}
        # domain -> its chain of records on the state topic, as this instance wrote it
        self.chains: dict[str, Chain] = {}
        self.restored_from_topic = 0
        self.restored_from_local = 0
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
        dropped = self.joins.drop(names, partitions)
        for p in partitions:
            for t in self.topics:
                self.offsets.pop((t, p), None)
                self.valid_from.pop((t, p), None)
        for n in names:
            self.published.pop(n, None)
            self.chains.pop(n, None)
        if self.on_release is not None:
            self.on_release(names)
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
            plan = records.plan(p) if records is not None else None
            if plan is not None and (
                mine is None or plan.newest[0] > mine[0] or plan.newest[1] > mine[1]
            ):
                for rec in plan.records:
                    restore(rec.snapshot, self.domains, self.joins, self.hasher)
                self.offsets[(ctx, p)], self.offsets[(rew, p)] = plan.start
                self.valid_from[(ctx, p)] = {d: v[0] for d, v in plan.valid_from.items()}
                self.valid_from[(rew, p)] = {d: v[1] for d, v in plan.valid_from.items()}
                self.restored_from_topic += 1
                log.info(
                    "partition %d restored from the state topic: %d domains, from offsets %s",
                    p,
                    len(plan.records),
                    plan.start,
                )
            elif snap is not None and mine is not None:
                names = restore(snap, self.domains, self.joins, self.hasher, partitions={p})
                self.offsets[(ctx, p)], self.offsets[(rew, p)] = mine
                for t in self.topics:
                    table = snap.meta.get("valid_from", {}).get(f"{t}|{p}")
                    if table:
                        self.valid_from[(t, p)] = {str(d): int(o) for d, o in table.items()}
                self.restored_from_local += 1
                log.info(
                    "partition %d restored from local checkpoint %d: %d domains, offsets %s",
                    p,
                    snap.version,
                    len(names),
                    mine,
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
            for p in todo:
                if (ctx, p) in snap.offsets:
                    found[p] = snap
        return found

    def _read_topic(self) -> StateRecords | None:
        for attempt in range(3):
            try:
                return read_state_topic(self.settings)
            except Exception as exc:  # noqa: BLE001 - any failure: retry, then local only
                log.error(
                    "cannot read the state topic %s (attempt %d of 3): %s",
                    self.settings.topic_state,
                    attempt + 1,
                    exc,
                )
        log.error("restoring from local checkpoints only: they may be older than the topic's")
        return None

    # -- the message path ---------------------------------------------------------------
    def already_applied(self, topic: str, partition: int, domain: str, offset: int) -> bool:
        """Whether a replayed message is already reflected in its domain's restored state."""
        table = self.valid_from.get((topic, partition))
        if not table:
            return False
        start = table.get(domain)
        return start is not None and offset < start

    # -- checkpoints --------------------------------------------------------------------
    def advance(self, positions: dict[TP, int]) -> None:
        """Record the consumer's positions (next offsets) as the state's offsets.

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

    def valid_from_meta(self) -> dict[str, dict[str, int]]:
        return {f"{t}|{p}": dict(table) for (t, p), table in self.valid_from.items()}

    def publish_plan(self) -> tuple[dict[str, int], dict[int, Offsets], dict[str, Offsets]]:
        """What the state topic needs now: changed domains (-> partition), each held
        partition's offsets, and domains whose state is ahead of those (mid-replay)."""
        ctx, rew = self.topics
        changed = {
            name: st.partition
            for name, st in self.domains.states.items()
            if self.published.get(name) != self.domains.signature(st)
        }
        for early in self.joins.early_items():
            if early.domain not in self.domains.states and early.partition in self.held:
                changed[early.domain] = early.partition
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
        return changed, parts, ahead

    def mark_published(
        self, signatures: Mapping[str, tuple[int, ...]], chains: Mapping[str, Chain | None]
    ) -> None:
        self.published.update(signatures)
        for name, chain in chains.items():
            if chain is None or name not in self.domains.states:
                self.chains.pop(name, None)
            else:
                self.chains[name] = chain


def check_resume_points(
    consumer: Consumer,
    partitions: list[TopicPartition],
    offsets: dict[TP, int],
    state_topic: str,
) -> None:
    """Warn about an assignment whose state does not match its topics: a checkpoint that
    resumes past a partition's end (the topic was emptied or recreated; the embedded
    broker keeps nothing across its restarts), or partitions the group committed offsets
    for while no checkpoint (local or ``state_topic``) holds them (their state was lost)."""
    fresh = []
    for tp in partitions:
        off = offsets.get((tp.topic, tp.partition))
        if off is None:
            fresh.append(TopicPartition(tp.topic, tp.partition))
            continue
        try:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=5.0, cached=False
            )
        except KafkaException as exc:
            log.debug("no watermarks for %s[%d]: %s", tp.topic, tp.partition, exc)
            continue
        if 0 <= high < off:
            log.warning(
                "%s[%d]: the checkpoint resumes at offset %d but the partition ends at %d: "
                "the topic was emptied or recreated since; reading it from its start",
                tp.topic,
                tp.partition,
                off,
                high,
            )
    if not fresh:
        return
    try:
        committed = consumer.committed(fresh, timeout=5.0)
    except KafkaException as exc:
        log.debug("committed offsets unavailable: %s", exc)
        return
    lost = [f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in committed if tp.offset > 0]
    if lost:
        log.warning(
            "state lost: the group committed offsets for %s but neither the local store "
            "nor %s holds their state; their domains start afresh from those offsets",
            ", ".join(lost),
            state_topic,
        )
