"""The joined log (``RL_JOINED_LOG``): every finished join, for training and evaluation.

One JSON object per finished decision: joined to its reward, or expired (learned with the
default reward, or dropped when ``RL_DEFAULT_REWARD=none``). Features are the hashed sparse
vectors the policy saw, so `bandit-stream replay` and `tune` feed other policies exactly
the same inputs. A file path appends JSON lines (flushed at every checkpoint and on
shutdown); ``kafka:TOPIC`` produces them keyed by domain through the decisions' retrying
delivery. At-least-once: a crash between two checkpoints may repeat the records of the
replayed tail (dedupe on ``domain`` + ``event_id``).

Record fields: ``domain``, ``event_id``, ``n_features``, ``context`` ([indices, values]),
``candidates``, ``candidate_features`` (candidate -> [indices, values], or null),
``action``, ``chosen`` (its index), ``probability``, ``distribution``, ``reward`` (null if
dropped), ``default_reward`` (true when the window expired), ``policy``,
``policy_version``, ``variant``, ``decided_at``, ``finished_at``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import IO, Any

import orjson

from stream.core.join import Pending
from stream.errors import InputFileError
from stream.kafka.delivery import Delivery
from stream.state.records import joined_record

log = logging.getLogger(__name__)


class JoinedLog:
    """Writes finished joins to a JSONL file or a Kafka topic."""

    def __init__(self, target: str, n_features: int, delivery: Delivery | None = None) -> None:
        self.n_features = n_features
        self.written = 0
        self._file: IO[bytes] | None = None
        self._topic: str | None = None
        self._delivery = delivery
        if target.startswith("kafka:"):
            self._topic = target[len("kafka:") :]
            if not self._topic or delivery is None:
                raise ValueError("RL_JOINED_LOG=kafka:TOPIC needs a topic name")
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "ab", buffering=1 << 20)  # noqa: SIM115 - closed in close()

    def write(self, p: Pending, reward: float | None, default: bool) -> None:
        line = orjson.dumps(joined_record(p, reward, default, self.n_features, time.time()))
        if self._file is not None:
            self._file.write(line + b"\n")
        else:
            assert self._delivery is not None
            self._delivery.produce(line, p.domain.encode(), topic=self._topic)
        self.written += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._delivery = None  # the service releases its producer once stopped


def read(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL joined log (a bad line is reported and skipped)."""
    out = []
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    log.warning("%s:%d: not JSON (%s); skipped", path, n, exc)
    except OSError as exc:
        raise InputFileError(f"cannot read the joined log {path}: {exc.strerror}") from exc
    return out
