"""Checkpoints: the state written and published first, its input offsets committed after.

A checkpoint, in order (Quix Streams' ``Checkpoint.commit`` is the model):

1. ``learn``: on revoke and shutdown, learn every buffered reward (a periodic checkpoint
   stores the buffers instead, so it never stalls the loop with learning);
2. ``flush``: every decision of a processed context is acknowledged by Kafka;
3. ``positions``: the consumer's position on each assigned partition; everything before
   it is now fully reflected in the state;
4. ``snapshot``: a copy-on-write snapshot, in the loop thread;
5. ``write``: in the background writer, policies, pending joins and offsets in one SQLite
   transaction, then the changed domains and partition markers to the state topic;
6. ``commit``: only once the SQLite transaction commits, the same offsets to Kafka
   (SQLite stays authoritative).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from stream.core.streamtime import StreamTime
from stream.failpoints import Failpoints
from stream.failpoints import check as failpoint
from stream.kafka.delivery import Delivery
from stream.state.delta import Chain
from stream.state.ownership import Ownership
from stream.state.publisher import Abandoned, PartitionMark, StatePublisher
from stream.state.snapshot import take_snapshot
from stream.sysmem import release_free_memory

log = logging.getLogger(__name__)


def _no_lap(stage: str) -> None:
    pass


class Flushable(Protocol):
    def flush(self) -> None: ...


FAILURES_NOT_READY = 3  # consecutive failed writes before /readyz says so


@dataclass(frozen=True)
class Written:
    """The checkpoint is in SQLite (and its offsets were committed to Kafka)."""

    version: int


@dataclass(frozen=True)
class Started:
    """A periodic checkpoint is being written in the background."""


@dataclass(frozen=True)
class Skipped:
    """No checkpoint: the last one stands."""

    reason: str


Outcome = Written | Started | Skipped


@dataclass
class PendingWrite:
    """A write in the background writer and what to do once it commits."""

    future: Future[int]
    commit: list[TopicPartition]  # offsets to commit to Kafka once SQLite holds them
    # per domain published, so unchanged ones are not resent
    signatures: dict[str, tuple[int, ...]]
    sync: bool  # commit synchronously (revoke, shutdown)
    started: float  # perf_counter at the start of the checkpoint
    # per domain published, its chain on the state topic now (None: unknown, start anew)
    chains: dict[str, Chain | None] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)  # of the domains published
    gone: set[str] = field(default_factory=set)  # domains whose records it deletes
    # Set when its partitions are lost: it stops, purges what it queued, commits nothing.
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Clients:
    """The Kafka side of a checkpoint, present while the service runs."""

    consumer: Consumer
    delivery: Delivery
    publisher: StatePublisher | None


class Checkpointer:
    def __init__(
        self,
        ownership: Ownership,
        failpoints: Failpoints | None,
        on_learned: Callable[[int], None],
        clock: StreamTime | None = None,
    ) -> None:
        """Checkpoints the state ``ownership`` holds (its domains, joins, feature hasher,
        store and decision log)."""
        self.decision_log = ownership.decision_log
        self.clock = clock
        self.domains = ownership.domains
        self.joins = ownership.joins
        self.hasher = ownership.hasher
        self.ownership = ownership
        self.store = ownership.store
        self.failpoints = failpoints
        self.on_learned = on_learned
        self.clients: Clients | None = None
        self.joined_log: Flushable | None = None  # flushed before each checkpoint
        self.lap: Callable[[str], None] = _no_lap  # the loop's stage timer
        # One background writer: the loop only takes the snapshot; SQLite writes beside it.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self.writing: PendingWrite | None = None
        self.last_started = time.monotonic()
        # Epoch seconds of the last successful checkpoint (the start until there is one):
        # bandit_checkpoint_age_seconds grows while checkpoints fail.
        self.last_at = time.time()
        self.last_duration_s = 0.0  # start to SQLite commit
        self.written = 0
        self.failures = 0  # consecutive failed writes
        self.last_error = ""

    @property
    def failing(self) -> bool:
        return self.failures >= FAILURES_NOT_READY

    def due(self, interval_s: float) -> bool:
        """Time for a periodic one, and the previous write is done (never wait for it)."""
        return self.writing is None and time.monotonic() - self.last_started >= interval_s

    def checkpoint(self, wait: bool, timeout_s: float, stop_by: Callable[[], float]) -> Outcome:
        """Steps 1-5 now; with ``wait`` (revoke, shutdown) also 6, else 6 in :meth:`finish`.

        ``timeout_s`` bounds the flush and the publish; ``stop_by`` is the shutdown's
        monotonic deadline, which a flush gives up at."""
        if self.clients is None:
            return Skipped("not running")
        self.finish(block=True)  # one write at a time, in order
        self.last_started = time.monotonic()
        started = time.perf_counter()
        if self.joined_log is not None:
            self.joined_log.flush()
        if wait:
            self.on_learned(self.domains.learner.learn(time.time(), force=True))
        remaining = self.clients.delivery.flush(timeout_s, stop_by)
        self.lap("checkpoint_flush")
        if remaining:
            log.error(
                "%d decisions unacknowledged: checkpoint skipped, their inputs will be "
                "decided again after a restart",
                remaining,
            )
            return Skipped(f"{remaining} decisions unacknowledged")
        consumer = self.clients.consumer
        try:
            positions = consumer.position(consumer.assignment())
        except KafkaException as exc:
            log.warning("cannot read positions for a checkpoint: %s", exc)
            return Skipped(f"positions: {exc}")
        self.writing = self._submit(positions, wait, timeout_s, started)
        self.lap("checkpoint_snapshot")
        if not wait:
            return Started()
        return self.finish(block=True) or Skipped("no write")

    def _submit(
        self, positions: list[TopicPartition], sync: bool, timeout_s: float, started: float
    ) -> PendingWrite:
        own = self.ownership
        consumer = self.clients.consumer if self.clients else None
        ends: dict[int, int | None] = {}  # decisions partition -> its end, read once

        def decisions_end(p: int) -> int | None:
            if consumer is None or self.decision_log is None:
                return None
            q = self.decision_log.partition_of(p)
            if q not in ends:
                ends[q] = self.decision_log.end(consumer, p)
            return ends[q]

        own.advance({(tp.topic, tp.partition): tp.offset for tp in positions}, decisions_end)
        self.lap("checkpoint_positions")
        changed, parts, ahead, gone = own.publish_plan()
        signatures = {d: own.signature(d) for d in changed}
        until = None
        if self.clock is not None:  # a re-sent reward or context may still come till both pass
            rewards = self.clock.rewards_until(set(own.held))
            contexts = self.clock.contexts_until(set(own.held))
            until = {p: min(rewards[p], contexts[p]) for p in own.held}
        snap = take_snapshot(self.domains, self.joins, self.hasher, own.offsets, until)
        snap.meta.valid_from = own.valid_from_meta()
        snap.meta.epochs, snap.meta.marks = dict(own.epochs), dict(own.marks)
        commit = [
            TopicPartition(tp.topic, tp.partition, own.offsets[(tp.topic, tp.partition)])
            for tp in positions
            if own.offsets.get((tp.topic, tp.partition), -1) >= 0
        ]
        records = {d: (p, ahead[d]) for d, p in changed.items() if d in ahead}
        chains = {d: c for d in records if (c := own.chains.get(d)) is not None}
        markers = {
            p: PartitionMark(
                offs,
                own.epochs.get(p, 0),
                own.marks.get(p, OFFSET_BEGINNING),
                own.heads_of(p, gone),
            )
            for p, offs in parts.items()
        }
        deleted = {d: own.heads[d] for d in gone}  # (partition, head or None)
        partitions = {d: p for d, (p, _) in records.items()}
        published: dict[str, Chain | None] = {}
        store, fp = self.store, self.failpoints
        publisher = self.clients.publisher if self.clients else None
        cancel = threading.Event()

        def write() -> int:
            failpoint(fp, "checkpoint_write")
            snap.complete()
            if cancel.is_set():
                raise Abandoned("checkpoint abandoned: its partitions were lost")
            version = store.write(snap)
            if publisher is not None and markers:
                try:
                    failpoint(fp, "state_publish")
                    # Paced only when the loop decides beside it (not on revoke, shutdown).
                    made = publisher.publish(
                        snap, records, markers, timeout_s, chains, cancel, deleted, not sync
                    )
                    published.update(made)
                except Abandoned:
                    raise
                except Exception:  # the local checkpoint stands; republished next time
                    log.exception("state topic publish of checkpoint %d failed", version)
                    signatures.clear()
                    gone.clear()
                    published.update(dict.fromkeys(records))  # what the topic holds is unknown
            return version

        return PendingWrite(
            self._writer.submit(write),
            commit,
            signatures,
            sync,
            started,
            published,
            partitions,
            gone,
            cancel,
        )

    def finish(self, block: bool) -> Written | Skipped | None:
        """Step 6 once the background write has committed; None while none finished."""
        w = self.writing
        if w is None or not (block or w.future.done()):
            return None
        self.writing = None
        w.future.exception()  # wait: until the write is over its arrays must stay untouched
        self.domains.learner.end_write()
        try:
            version = w.future.result()
        except Abandoned as exc:
            return Skipped(str(exc))
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception(
                "checkpoint write failed (%d in a row); offsets stay uncommitted", self.failures
            )
            return Skipped(f"write failed: {self.last_error}")
        if w.cancel.is_set():  # lost meanwhile: the next owner has the partitions now
            return Skipped("abandoned: the partitions were lost")
        self.failures = 0
        self.written += 1
        release_free_memory()  # the snapshot's clones and buffers are gone now
        self.last_at = time.time()
        self.last_duration_s = time.perf_counter() - w.started
        self.ownership.mark_published(w.signatures, w.chains, w.partitions, w.gone)
        if w.commit and self.clients is not None:
            self._commit(self.clients.consumer, w, version)
        return Written(version)

    def _commit(self, consumer: Consumer, w: PendingWrite, version: int) -> None:
        failpoint(self.failpoints, "commit")
        try:
            # SQLite is authoritative; the Kafka copy need not hold up the loop
            # (synchronous only on revoke and shutdown, when it is the last word).
            if w.sync:
                consumer.commit(offsets=w.commit, asynchronous=False)
            else:
                consumer.commit(offsets=w.commit, asynchronous=True)
        except KafkaException as exc:
            log.warning("commit after checkpoint %d failed: %s", version, exc.args[0].str())

    def abandon(self) -> None:
        """After an unexpected error: let an in-flight write end, commit nothing of it."""
        if self.writing is not None:
            self.writing.future.exception()
            # Its publish may have moved the domains' chains: the next record is a base.
            self.ownership.mark_published({}, dict.fromkeys(self.writing.chains), {})
            self.writing = None
            self.domains.learner.end_write()

    def lost(self) -> None:
        """The partitions are another member's now: a write in flight stops where it is,
        withdraws what it queued, and its offsets are never committed."""
        w = self.writing
        if w is not None:
            w.cancel.set()
            if self.clients is not None and self.clients.publisher is not None:
                self.clients.publisher.purge()

    def close(self, publish_timeout_s: float) -> None:
        self._writer.shutdown(wait=True)
        if self.clients is not None and self.clients.publisher is not None:
            self.clients.publisher.close(publish_timeout_s)
        self.clients = None
