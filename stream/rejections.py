"""Rejected input: counted, logged at a bounded rate, and sent to the dead-letter topic
with its reason; unexpected exceptions handled as RL_ON_PROCESSING_ERROR says."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
from confluent_kafka import KafkaError, Message

from stream.config import Settings
from stream.core.domain import DomainState
from stream.core.join import Pending
from stream.errorpolicy import ProcessingErrors
from stream.kafka.deadletter import DeadLetters, Source, exception_headers
from stream.logs import RateLimitedLog
from stream.observe.metrics import Metrics
from stream.observe.stats import Stats

log = logging.getLogger("stream.processor")


class Rejections:
    def __init__(
        self,
        settings: Settings,
        stats: Stats,
        metrics: Metrics,
        errors: ProcessingErrors,
        undeliverable: Callable[[str, str], None],
    ) -> None:
        self.settings = settings
        self.stats = stats  # transport's own counts: delivery retries, refused log records
        self.metrics = metrics
        self.errors = errors
        self.undeliverable = undeliverable  # (domain, event id): no reward can come for it
        self.log = RateLimitedLog(log)
        self.dead_letters: DeadLetters | None = None  # set while the service runs

    def on_retry(self, err: KafkaError) -> None:
        self.stats.delivery_retries += 1
        self.log.warning(
            "delivery", "delivery failed after librdkafka's retries (%s); producing again", err
        )

    def reject(
        self,
        code: str,
        reason: str,
        src: Message | Source | None,
        exc: BaseException | None = None,
    ) -> None:
        """Dead-letter a message (original bytes and key, the reason in its headers)."""
        self.metrics.reject(code)
        if isinstance(src, Message):
            src = Source.of(src)
        where = "?" if src is None else f"{src.topic}[{src.partition}]@{src.offset}"
        self.log.warning(code, "dead-lettered %s: %s (%s)", where, reason, code)
        if src is not None and self.dead_letters is not None:
            extra = None if exc is None else exception_headers(exc)
            self.dead_letters.send(code, reason, src, extra)

    def internal_error(self, exc: Exception, src: Message | Source | None) -> None:
        """An unexpected exception while processing one message: re-raised under
        RL_ON_PROCESSING_ERROR=fail, else the message is dead-lettered (internal_error)."""
        self.errors.handle(exc)
        self.dead_letter_failure(exc, src)

    def dead_letter_failure(self, exc: Exception, src: Message | Source | None) -> None:
        """A message whose processing raised, the error already handled: dead-lettered."""
        self.reject("internal_error", f"{type(exc).__name__}: {exc}", src, exc)

    def learn_failed(
        self, exc: Exception, state: DomainState, items: list[tuple[Pending, float]]
    ) -> None:
        """A domain's learn raised: its rewards are dead-lettered, re-encoded from the
        joins (the raw reward messages are not kept), with source offset -1."""
        self.errors.handle(exc)
        for pending, reward in items:
            value = orjson.dumps(
                {"event_id": pending.event_id, "domain": pending.domain, "reward": reward}
            )
            src = Source(
                self.settings.topic_rewards,
                state.partition,
                -1,
                int(time.time() * 1000),
                pending.domain.encode(),
                value,
            )
            reason = f"learning failed: {type(exc).__name__}: {exc}"
            self.reject("internal_error", reason, src, exc)

    def decision_refused(
        self, src: Message | Source | None, domain: str, event_id: str, err: KafkaError
    ) -> None:
        """The decisions topic refused a decision (e.g. too large): its context is
        dead-lettered and the decision forgotten (no reward can come for it)."""
        self.undeliverable(domain, event_id)
        self.reject(
            "undeliverable",
            f"{self.settings.topic_decisions} refused the decision for {event_id!r}: {err.str()}",
            src,
        )

    def record_refused(self, err: KafkaError) -> None:
        """A joined-log record was refused (too large for its topic): counted, logged."""
        self.stats.joined_log_refused += 1
        self.log.warning("joined_log", "joined-log record refused: %s", err.str())
