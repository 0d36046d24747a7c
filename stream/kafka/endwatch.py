"""Where each held input partition's log ends, asked of the brokers beside the loop.

Once a second a thread asks for the end offsets of the partitions the loop names, noting
the wall-clock time it asked at. When the loop has consumed a partition at or past such an
answer, every record appended to it before that time has been read: its stream time may
follow the wall clock up to then (:mod:`stream.core.streamtime`), so a quiet partition's reward
windows still close. An answer only ever says what was there when it was asked, so a
consumer that stopped fetching (a rebalance, a pause, a broker away) never makes a window
close early. (The embedded broker answers with its last batch's first offset: below the
end, but past the position of a consumer that has not read that batch.)

It asks for the held partitions' decisions partitions too: a checkpoint takes their last
answer as its marks (:mod:`stream.kafka.decisionlog`) instead of a request in the loop.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from stream.config import Settings
from stream.core.streamtime import StreamTime
from stream.kafka.clients import admin_config
from stream.kafka.decisionlog import DecisionLog

log = logging.getLogger(__name__)

TP = tuple[str, int]


class EndWatch:
    INTERVAL_S = 1.0
    TIMEOUT_S = 5.0

    def __init__(self, settings: Settings, decisions: DecisionLog | None = None) -> None:
        self.contexts_topic = settings.topic_contexts
        self.decisions = decisions
        self.settings = settings
        self._admin: AdminClient | None = None  # made by start: constructing connects nowhere
        self._wanted: frozenset[TP] = frozenset()
        self._refreshed = 0.0
        self._answers: dict[TP, tuple[float, int]] = {}
        self._failing = False  # the last round had a failure (warned once per streak)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="end-watch", daemon=True)

    def start(self) -> None:
        self._admin = AdminClient(admin_config(self.settings))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.TIMEOUT_S + 1.0)
        self._admin = None

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            admin, wanted = self._admin, self._wanted
            if admin is None or not wanted:
                continue
            asked = time.time()
            answers: dict[TP, tuple[float, int]] = {}
            failed: list[str] = []
            try:
                futures = admin.list_offsets(
                    {TopicPartition(t, p): OffsetSpec.latest() for t, p in wanted},
                    request_timeout=self.TIMEOUT_S,
                )
            except Exception as exc:  # noqa: BLE001 - no answer: nothing is concluded
                futures, failed = {}, [str(exc)]
            for tp, f in futures.items():  # one partition's failure is no other's
                try:
                    answers[(tp.topic, tp.partition)] = (asked, f.result(self.TIMEOUT_S).offset)
                except Exception as exc:  # noqa: BLE001 - that partition concludes nothing
                    failed.append(f"{tp.topic}[{tp.partition}]: {exc}")
            if failed and not self._failing:
                log.warning(
                    "end offsets unavailable (%s): windows of quiet partitions wait", failed[0]
                )
            self._failing = bool(failed)
            if self.decisions is not None:
                for (topic, q), (_asked, end) in list(answers.items()):
                    if topic == self.decisions.topic:
                        self.decisions.saw_end(q, end)
                        del answers[(topic, q)]
            with self._lock:
                self._answers.update(answers)

    def observe(self, consumer: Consumer, clock: StreamTime) -> None:
        """Tell ``clock`` which partitions the loop has consumed past their last answer
        (as far as ``clock`` knows what it consumed); ask about the partitions assigned
        now (call every turn: it acts once a second)."""
        now = time.monotonic()
        if now >= self._refreshed + self.INTERVAL_S:
            self._refreshed = now
            try:
                held = {(tp.topic, tp.partition) for tp in consumer.assignment()}
                if self.decisions is not None:
                    for _t, p in list(held):
                        if (q := self.decisions.partition_of(p)) >= 0:
                            held.add((self.decisions.topic, q))
                self._wanted = frozenset(held)
            except Exception as exc:  # noqa: BLE001 - e.g. closing
                log.debug("assignment unavailable: %s", exc)
        with self._lock:
            answers, self._answers = self._answers, {}
        for (topic, p), (asked, end) in answers.items():
            is_context = topic == self.contexts_topic
            at = clock.position(is_context, p)
            if at is not None and 0 <= end <= at:
                clock.seen_end(is_context, p, asked)
