"""Publishing a checkpoint to the state topic: each changed domain's record (a base or a
delta on its chain), then tombstones and partition markers (see :mod:`stream.state.topic`
for the format and :mod:`stream.state.delta` for the chains)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import Producer

from stream.config import Settings
from stream.kafka.clients import common_config
from stream.state.delta import MAX_DELTAS, Chain, changes, delta_key, digest_domain
from stream.state.store import Snapshot
from stream.state.topic import MAX_RECORD_BYTES, Offsets, encode_domain, encode_marker, marker_key

log = logging.getLogger(__name__)


# Serialised state records queued in the producer at most (one larger record still goes
# alone): bounds the publish's memory whatever the number of domains.
INFLIGHT_BYTES = 16 << 20


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

    def _send(self, items: Iterable[tuple[str, bytes | None]], deadline: float) -> None:
        self._failed = []
        topic = self.settings.topic_state
        timeout_s = deadline - time.monotonic()
        for key, value in items:
            # librdkafka keeps a copy of each record until the broker acknowledges it: bound
            # the bytes in flight so a checkpoint's records never sit in memory all at once.
            while self._inflight > INFLIGHT_BYTES:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"state topic {topic}: {self._inflight} bytes unacknowledged "
                        f"after {timeout_s:.0f} s"
                    )
                self._producer.poll(0.05)
            self._inflight += len(value or b"")
            self.sent_bytes += len(value or b"")
            while True:
                try:
                    self._producer.produce(
                        topic, value, key.encode(), on_delivery=self._on_delivery
                    )
                    break
                except BufferError:  # queue full: let deliveries drain, then retry
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"state topic {topic}: local queue full") from None
                    self._producer.poll(0.1)
        left = self._producer.flush(max(0.0, deadline - time.monotonic()))
        if left or self._failed:
            raise RuntimeError(
                f"state topic {topic}: {left} records unacknowledged, "
                f"{len(self._failed)} failed ({'; '.join(self._failed[:3])})"
            )

    def publish(
        self,
        snap: Snapshot,
        domains: dict[str, tuple[int, Offsets]],
        markers: dict[int, Offsets],
        timeout_s: float,
        chains: Mapping[str, Chain] | None = None,
    ) -> dict[str, Chain]:
        """Records of ``domains`` (domain -> partition, offsets its state reflects): a
        delta on the domain's chain in ``chains`` where one is worth it, else a new base;
        then, once every record is acknowledged, tombstones of the chains that new bases
        replace and the partitions' markers. Returns each published domain's chain."""
        chains = chains or {}
        by_domain: dict[str, list[Any]] = {}
        for p in snap.pending:
            by_domain.setdefault(p["domain"], []).append(p)
        made: dict[str, Chain] = {}
        retired: list[tuple[str, bytes | None]] = []

        # A generator, not a list: each record is encoded, handed to librdkafka (which
        # copies it) and released before the next, so a checkpoint of 1,000 domains never
        # holds all their serialised states at once.
        def records() -> Iterator[tuple[str, bytes]]:
            for d, (part, offs) in domains.items():
                roles = snap.domains.get(d, {})
                now = digest_domain(roles)
                pending = by_domain.get(d, [])
                chain = chains.get(d)
                delta = None if chain is None else changes(chain, now)
                if chain is not None and delta is not None:
                    parts, size = delta
                    k = chain.seq + 1
                    made[d] = Chain(chain.base, k, chain.base_bytes, chain.delta_bytes + size, now)
                    yield (
                        delta_key(d, k),
                        encode_domain(snap, d, part, offs, pending, chain.base, k, parts),
                    )
                    continue
                base = uuid.uuid4().hex[:16]
                made[d] = Chain(base, 0, sum(a.nbytes for a in now.values()), 0, now)
                old = MAX_DELTAS if chain is None else chain.seq
                retired.extend((delta_key(d, k), None) for k in range(1, old + 1))
                yield d, encode_domain(snap, d, part, offs, pending, base)

        deadline = time.monotonic() + timeout_s  # records and markers share the timeout
        self.sent_bytes = 0
        self._send(records(), deadline)
        markers_out = [(marker_key(p), encode_marker(p, o)) for p, o in markers.items()]
        self._send([*retired, *markers_out], deadline)
        log.debug(
            "state topic: %d records (%d deltas), %.2f MB, %d tombstones",
            len(made),
            sum(1 for c in made.values() if c.seq),
            self.sent_bytes / 2**20,
            len(retired),
        )
        return made

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.flush(timeout_s)
