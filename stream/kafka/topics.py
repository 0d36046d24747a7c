"""Topic creation and the start-up checks on the service's topics."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import Settings
from stream.errors import BrokerUnreachable, ConfigError, KafkaClientError

log = logging.getLogger(__name__)

# Policy states with long histories and many pending decisions exceed Kafka's 1 MB
# default; the state topic is created with this limit (and the clients configured so).
MAX_RECORD_BYTES = 64 * 1024 * 1024


def _partition_counts(admin: AdminClient, timeout: float, bootstrap: str) -> dict[str, int]:
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0]
        raise BrokerUnreachable(
            f"cannot reach Kafka at {bootstrap} (RL_KAFKA_BOOTSTRAP_SERVERS) within "
            f"{timeout:g} s (RL_KAFKA_CONNECT_TIMEOUT_S): {err.str()}",
            err.code(),
        ) from exc
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def _await_topics(
    admin: AdminClient, timeout: float, bootstrap: str, names: Iterable[str]
) -> dict[str, int]:
    """Partition counts once every named topic shows in the metadata: Apache Kafka
    answers a creation before every broker's metadata has the topic."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _partition_counts(admin, timeout, bootstrap)
        if all(counts.get(n) for n in names) or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def ensure_topics(
    settings: Settings, admin: AdminClient, timeout: float | None = None
) -> dict[str, int]:
    """Create the service's missing topics; check contexts and rewards are co-partitioned.

    A domain's contexts and rewards must land in the same partition number so that one
    instance holds its decisions and receives its rewards; that requires equal counts.
    Returns the partition count of every service topic.
    """
    s = settings
    timeout = s.kafka_connect_timeout_s if timeout is None else timeout
    wanted = {
        s.topic_contexts: {},
        s.topic_rewards: {},
        s.topic_decisions: {},
        s.topic_metrics: {},
        s.topic_dead_letter: {},
        # Compacted: the newest snapshot per domain; large enough for a domain's state.
        s.topic_state: {"cleanup.policy": "compact", "max.message.bytes": str(MAX_RECORD_BYTES)},
    }
    existing = _partition_counts(admin, timeout, s.kafka_bootstrap_servers)
    missing = [
        NewTopic(name, num_partitions=s.topic_partitions, replication_factor=-1, config=cfg)
        for name, cfg in wanted.items()
        if name not in existing
    ]
    if missing:
        for name, fut in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                fut.result()
                log.info("created topic %s with %d partitions", name, s.topic_partitions)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() != 36:  # TOPIC_ALREADY_EXISTS: another instance won the race
                    raise KafkaClientError(
                        f"cannot create topic {name}: {err.str()}", err.code()
                    ) from exc
        existing = _await_topics(admin, timeout, s.kafka_bootstrap_servers, wanted)
    counts = {name: existing.get(name, 0) for name in wanted}
    if counts[s.topic_contexts] != counts[s.topic_rewards]:
        raise ConfigError(
            f"topics {s.topic_contexts} ({counts[s.topic_contexts]} partitions) and "
            f"{s.topic_rewards} ({counts[s.topic_rewards]} partitions) must have the same "
            "partition count, so that a domain's contexts and rewards meet in one instance"
        )
    return counts
