"""Publishing a checkpoint to the state topic: each changed domain's record (a base or a
delta on its chain), then tombstones and partition markers (see :mod:`stream.state.topic`
for the format and :mod:`stream.state.delta` for the chains)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Producer

from stream.config import Settings
from stream.errors import CheckpointError
from stream.kafka.clients import common_config
from stream.kafka.topics import MAX_RECORD_BYTES
from stream.state.delta import (
    MAX_DELTAS,
    Chain,
    changes,
    delta_key,
    digest_domain,
)
from stream.state.records import Snapshot
from stream.state.topic import (
    EPOCH_HEADER,
    DomainShare,
    Head,
    Offsets,
    encode_domain,
    encode_marker,
    marker_key,
)

log = logging.getLogger(__name__)


# Serialised state records queued in the producer at most (one larger record still goes
# alone): bounds the publish's memory whatever the number of domains.
INFLIGHT_BYTES = 16 << 20


class PublishFailed(CheckpointError):
    """The state topic did not take a checkpoint's records (nothing of it is left queued)."""


class Abandoned(CheckpointError):
    """A publish stopped because its partitions were lost (nothing of it is left queued)."""


@dataclass(frozen=True)
class PartitionMark:
    """What a partition's marker says besides its offsets."""

    offsets: Offsets
    epoch: int
    mark: int  # decisions-topic offset
    heads: dict[str, Head]  # every domain of the partition -> its newest record, before


class Pace:
    """Holds a sender to ``bytes_per_s`` (0: unpaced), sleeping at most ``budget_s`` in all."""

    def __init__(self, bytes_per_s: float, budget_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self.budget_s = budget_s
        self.start = time.monotonic()
        self.sent = 0
        self.slept = 0.0

    def wait(self, n: int, check: Callable[[], None]) -> None:
        """Before sending ``n`` more bytes: sleep until the rate allows them."""
        if self.bytes_per_s > 0:
            ahead = self.sent / self.bytes_per_s - (time.monotonic() - self.start)
            nap = min(ahead, self.budget_s - self.slept)
            while nap > 0:
                check()
                step = min(nap, 0.05)
                time.sleep(step)
                self.slept += step
                nap -= step
        self.sent += n


class StatePublisher:
    """Produces a checkpoint's domain records, then its partition markers (see module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        conf = common_config(settings)
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
            }
        )
        conf.update(settings.kafka_extra)
        conf["message.max.bytes"] = MAX_RECORD_BYTES  # a domain's state, whatever the rest
        self._producer = Producer(conf)
        self._failed: list[str] = []
        self._inflight = 0  # bytes handed to librdkafka and not yet acknowledged
        self.sent_bytes = 0  # by the last publish

    def _on_delivery(self, err: Any, msg: Any) -> None:
        self._inflight -= len(msg)  # the value's length
        if err is not None:
            self._failed.append(f"{msg.key()!r}: {err}")

    def _send(
        self,
        items: Iterable[tuple[str, bytes | None]],
        epoch: Mapping[str, int],
        deadline: float,
        cancel: threading.Event | None,
        paced: bool = False,
    ) -> None:
        """Produce ``items``, each with its writer's epoch (``epoch[key]``) in a header,
        and wait for their acknowledgements."""
        self._failed = []
        topic = self.settings.topic_state
        timeout_s = deadline - time.monotonic()
        rate = self.settings.state_publish_mb_per_s * 1e6 if paced else 0.0
        # Sleeping adds to the time the broker needs: a quarter of the publish's time at most.
        pace = Pace(rate, timeout_s / 4)

        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise Abandoned(f"state topic {topic}: publish abandoned (partitions lost)")
            if time.monotonic() > deadline:
                raise PublishFailed(
                    f"state topic {topic}: {self._inflight} bytes unacknowledged "
                    f"after {timeout_s:.0f} s"
                )

        for key, value in items:
            # librdkafka keeps a copy of each record until the broker acknowledges it: bound
            # the bytes in flight so a checkpoint's records never sit in memory all at once.
            while self._inflight > INFLIGHT_BYTES:
                check()
                self._producer.poll(0.05)
            check()
            pace.wait(len(value or b""), check)
            self._inflight += len(value or b"")
            self.sent_bytes += len(value or b"")
            while True:
                try:
                    self._producer.produce(
                        topic,
                        value,
                        key.encode(),
                        headers=[(EPOCH_HEADER, str(epoch.get(key, 0)).encode())],
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:  # queue full: let deliveries drain, then retry
                    check()
                    self._producer.poll(0.1)
        while len(self._producer):
            check()
            self._producer.flush(min(0.2, max(0.0, deadline - time.monotonic())))
        if self._failed:
            raise PublishFailed(
                f"state topic {topic}: {len(self._failed)} records failed "
                f"({'; '.join(self._failed[:3])})"
            )

    def purge(self) -> None:
        """Withdraw everything queued: none of it may land after another owner restored."""
        self._producer.purge(in_queue=True, in_flight=False, blocking=True)
        self._producer.poll(0)
        self._inflight = 0

    def publish(
        self,
        snap: Snapshot,
        domains: dict[str, tuple[int, Offsets]],
        markers: dict[int, PartitionMark],
        timeout_s: float,
        chains: Mapping[str, Chain] | None = None,
        cancel: threading.Event | None = None,
        deleted: Mapping[str, tuple[int, Head | None]] | None = None,
        paced: bool = False,
    ) -> dict[str, Chain]:
        """Records of ``domains`` (domain -> partition, offsets its state reflects): a
        delta on the domain's chain in ``chains`` where one is worth it, else a new base;
        then, once every record is acknowledged, tombstones of the chains that new bases
        replace and of the ``deleted`` domains' records, and the partitions' markers.
        Returns each published domain's chain. On any failure nothing of it stays queued
        (:class:`PublishFailed`, :class:`Abandoned`)."""
        chains = chains or {}
        shares = DomainShare.by_domain(snap)
        made: dict[str, Chain] = {}
        retired: list[tuple[str, bytes | None]] = []
        epochs: dict[str, int] = {}  # key -> its writer's epoch
        before = {d: h for m in markers.values() for d, h in m.heads.items()}

        def epoch_of(part: int) -> int:
            m = markers.get(part)
            return 0 if m is None else m.epoch

        def retire(d: str, part: int, base: str, n: int) -> None:
            for k in range(1, n + 1):
                key = delta_key(d, base, k)
                retired.append((key, None))
                epochs[key] = epoch_of(part)

        # A generator, not a list: each record is encoded, handed to librdkafka (which
        # copies it) and released before the next, so a checkpoint of 1,000 domains never
        # holds all their serialised states at once.
        def records() -> Iterator[tuple[str, bytes]]:
            for d, (part, offs) in domains.items():
                roles = snap.domains.get(d, {})
                now = digest_domain(roles)
                chain = chains.get(d)
                delta = None if chain is None else changes(chain, now)
                m = markers.get(part)
                fields: dict[str, Any] = {
                    "epoch": epoch_of(part),
                    "mark": OFFSET_BEGINNING if m is None else m.mark,
                    "of": shares.get(d) or DomainShare(),
                }
                if chain is not None and delta is not None:
                    parts, size = delta
                    k = chain.seq + 1
                    made[d] = Chain(chain.base, k, chain.base_bytes, chain.delta_bytes + size, now)
                    key = delta_key(d, chain.base, k)
                    epochs[key] = epoch_of(part)
                    yield (
                        key,
                        encode_domain(snap, d, part, offs, chain.base, k, parts, **fields),
                    )
                    continue
                base = uuid.uuid4().hex[:16]
                made[d] = Chain(base, 0, sum(a.nbytes for a in now.values()), 0, now)
                # The links of the chain this base replaces (as far as a restore saw it,
                # every place a link may have).
                if chain is not None:
                    retire(d, part, chain.base, chain.seq)
                elif d in before:
                    retire(d, part, before[d][0], MAX_DELTAS)
                epochs[d] = epoch_of(part)
                yield d, encode_domain(snap, d, part, offs, base, **fields)

        for d, (part, head) in (deleted or {}).items():
            retired.append((d, None))
            epochs[d] = epoch_of(part)
            if head is not None and head[0]:
                retire(d, part, head[0], MAX_DELTAS)
        deadline = time.monotonic() + timeout_s  # records and markers share the timeout
        self.sent_bytes = 0
        try:
            self._send(records(), epochs, deadline, cancel, paced)
            markers_out = []
            for part, m in markers.items():
                heads = dict(m.heads)
                heads.update((d, (c.base, c.seq)) for d, c in made.items() if domains[d][0] == part)
                key = marker_key(part)
                epochs[key] = m.epoch
                markers_out.append((key, encode_marker(part, m.offsets, m.epoch, m.mark, heads)))
            self._send([*retired, *markers_out], epochs, deadline, cancel)
        except BaseException:
            self.purge()
            raise
        log.debug(
            "state topic: %d records (%d deltas), %.2f MB, %d tombstones",
            len(made),
            sum(1 for c in made.values() if c.seq),
            self.sent_bytes / 2**20,
            len(retired),
        )
        return made

    def close(self, timeout_s: float = 5.0) -> None:
        if self._producer.flush(timeout_s):
            self.purge()
