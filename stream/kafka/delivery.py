"""Records out (decisions, dead letters, joined-log lines): each is delivered, or its failure
is handed to its owner; none is silently dropped and no callback sleeps or produces.

The failures of a produced record, kept apart:

- transient (broker away, leader moving, request timeouts): librdkafka retries these
  itself until ``delivery.timeout.ms``; a record it finally reports failed is produced
  again by :meth:`Delivery.service`, which the loop calls after every poll (never from
  inside the delivery callback, where the queue cannot drain);
- the record itself is refused (too large for the topic, invalid): trying again cannot
  help; its ``on_refused`` owner decides (a decision's context goes to the dead-letter
  topic; a dead letter is cut down, see :mod:`stream.kafka.deadletter`);
- fatal (the idempotent producer lost its state, authorization refused): :meth:`service`
  raises :class:`~stream.errors.DeliveryError` and the service stops without committing.

Order: a domain's records share its key, hence one partition, and the idempotent
producer keeps a partition's records in order through its own retries. Only records that
exhaust ``message.timeout.ms`` (the broker away that long) are produced again behind
the ones produced meanwhile; consumers join decisions by event id, not by position.
After a freeze past the group session they are withdrawn instead: the partition may be
another member's by then.

Input offsets are not tracked here: a checkpoint flushes (:meth:`Delivery.flush`) before
it reads the consumer's positions, so every offset it commits has its records settled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream.errors import DeliveryError

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]
FLUSH_SLICE_S = 0.5  # a long flush re-checks its deadline this often (a SIGTERM shortens it)
Refused = Callable[[KafkaError], None]

# The record, not the cluster, is the problem: no retry can deliver it.
RECORD_REFUSED = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
    }
)
# Nothing produced to this cluster or topic can succeed until an operator acts.
FATAL = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError.POLICY_VIOLATION,
        # Another producer took this one's identity: nothing it sends is accepted again.
        KafkaError.PRODUCER_FENCED,
    }
)


# Withdrawn by :meth:`Delivery.purge`: not to be delivered, so never produced again.
PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


def classify(err: KafkaError) -> str:
    """``"fatal"``, ``"refused"`` (this record), ``"purged"`` or ``"transient"``."""
    if err.fatal() or err.code() in FATAL:
        return "fatal"
    if err.code() in RECORD_REFUSED:
        return "refused"
    if err.code() in PURGED:
        return "purged"
    return "transient"


class Delivery:
    """Produces records and settles every failed delivery outside librdkafka's callbacks."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        on_refused: Refused | None = None,
        on_retry: Callable[[KafkaError], None] | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.retries = 0  # records produced again after librdkafka gave up on them
        self._default_refused = on_refused
        self._on_retry = on_retry
        self._again: list[
            tuple[str, bytes | None, bytes | None, Headers | None, Refused | None, int]
        ] = []
        self._refused: list[tuple[KafkaError, Refused | None]] = []
        self._fatal: KafkaError | None = None
        # Asked before anything is produced again: False after a freeze past the group
        # session, when the records may be another owner's (held back, then withdrawn).
        self.may_resend: Callable[[], bool] | None = None

    def produce(
        self,
        value: bytes | None,
        key: bytes | None,
        topic: str | None = None,
        headers: Headers | None = None,
        on_refused: Refused | None = None,
        partition: int = -1,
    ) -> None:
        """Produce to ``topic`` (default: the decisions topic) and ``partition`` (-1: the
        partitioner's choice), waiting while the local queue is full (backpressure: poll
        and wait, never drop). ``on_refused`` is told if this record can never be
        delivered (too large, invalid)."""
        target = topic or self.topic
        report = self._report if on_refused is None else partial(self._report_to, on_refused)
        while True:
            try:
                self.producer.produce(
                    target, value, key, partition=partition, headers=headers, on_delivery=report
                )
                return
            except BufferError:
                self.producer.poll(0.05)
            except KafkaException as exc:  # refused before it was queued (e.g. its size)
                err = exc.args[0]
                if classify(err) != "refused":
                    msg = f"cannot produce to {target}: {err.str()}"
                    raise DeliveryError(msg, err.code()) from exc
                self._settle_refused(err, on_refused)
                return

    def service(self) -> None:
        """Produce again what librdkafka gave up on, hand refused records to their owners,
        and raise on a fatal error. Call after every poll or flush."""
        if self._fatal is not None:
            err = self._fatal
            raise DeliveryError(f"producer failed: {err.str()}", err.code())
        if self._again and not self.withheld():
            again, self._again = self._again, []
            for topic, value, key, headers, on_refused, partition in again:
                self.retries += 1
                self.produce(value, key, topic, headers, on_refused, partition)
        if self._refused:
            refused, self._refused = self._refused, []
            for err, on_refused in refused:
                self._settle_refused(err, on_refused)

    def flush(self, timeout_s: float, stop_by: Callable[[], float] | None = None) -> int:
        """Wait until every record is settled (delivered, or refused and handed over);
        returns how many are still outstanding when ``timeout_s`` runs out, or earlier
        when the monotonic time ``stop_by()`` (asked again every slice) has passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            end = deadline if stop_by is None else min(deadline, stop_by())
            left = max(0.0, end - time.monotonic())
            remaining = self.producer.flush(min(left, FLUSH_SLICE_S))
            self.service()
            outstanding = remaining + len(self.producer) + len(self._again)
            # Records withheld across a freeze stay outstanding (nothing past their inputs
            # is committed) until the loop's rejoin withdraws them: no use waiting.
            if outstanding == 0 or time.monotonic() >= end or self.withheld():
                return outstanding

    def withheld(self) -> bool:
        """Whether records librdkafka gave up on are kept unsent: a freeze past the group
        session is pending, and their partitions may be another member's by now."""
        if not self._again or self.may_resend is None or self.may_resend():
            return False
        log.warning("holding back %d records given up on across a freeze", len(self._again))
        return True

    def poll(self) -> None:
        self.producer.poll(0)
        self.service()

    def purge(self) -> int:
        """Withdraw every record not yet sent (this instance may no longer publish for
        the partitions it held); returns how many were queued."""
        queued = len(self.producer)
        self.producer.purge(in_queue=True, in_flight=False, blocking=True)
        self.producer.poll(0)  # their reports: purged, so never produced again
        self._again.clear()
        return queued

    # -- inside librdkafka's callbacks: record only ----------------------------------------
    def _report(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed(err, msg, None)

    def _report_to(self, on_refused: Refused, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed(err, msg, on_refused)

    def _failed(self, err: KafkaError, msg: Message, on_refused: Refused | None) -> None:
        kind = classify(err)
        if kind == "fatal":
            self._fatal = self._fatal or err
        elif kind == "refused":
            self._refused.append((err, on_refused))
        elif kind == "purged":
            return
        else:
            if self._on_retry is not None:
                self._on_retry(err)
            headers = msg.headers()
            self._again.append(
                (
                    str(msg.topic()),
                    msg.value(),
                    msg.key(),
                    list(headers.items()) if isinstance(headers, dict) else headers,
                    on_refused,
                    -1 if (q := msg.partition()) is None else int(q),
                )
            )

    def _settle_refused(self, err: KafkaError, on_refused: Refused | None) -> None:
        handler = on_refused or self._default_refused
        if handler is None:
            raise DeliveryError(f"a record was refused: {err.str()}", err.code())
        handler(err)
