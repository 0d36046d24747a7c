"""The two brokers this project runs itself: embedded Tansu and Apache Kafka."""

from __future__ import annotations

from typing import Literal

from stream.errors import BrokerError
from stream.kafka.apache import KafkaCluster, java_binary, kafka_classpath
from stream.kafka.embedded import EmbeddedBroker

Engine = Literal["embedded", "kafka"]
ENGINES: tuple[Engine, ...] = ("embedded", "kafka")


def make_broker(
    engine: Engine, nodes: int = 1, port: int | None = None
) -> EmbeddedBroker | KafkaCluster:
    """A broker of ``engine``, not yet started (enter it as a context manager)."""
    if engine == "embedded":
        if nodes != 1:
            raise BrokerError("the embedded broker runs one node; use --engine kafka for more")
        return EmbeddedBroker(port=port)
    return KafkaCluster(nodes=nodes, port=port)


def kafka_unavailable() -> str | None:
    """Why Apache Kafka cannot start here (Java, Maven or the jars), or None when it can.

    Resolves the jars into the cache when they are missing, so the answer is final.
    """
    try:
        java_binary()
        kafka_classpath()
    except BrokerError as exc:
        return str(exc)
    return None
