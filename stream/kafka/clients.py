"""librdkafka configuration built in one place from the settings, and error wrapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from stream.config import Settings, load_settings
from stream.errors import ConfigError
from stream.logs import KAFKA_LOG


def common_config(settings: Settings) -> dict[str, Any]:
    """Connection and security properties shared by every client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
        "logger": KAFKA_LOG,
    }
    if settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username is not None:
        conf["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return conf


def fetch_batch(
    consumer: Consumer, n: int, wait_s: float, waited: Callable[[], None]
) -> list[Message]:
    """Up to ``n`` messages: whatever is already fetched, without waiting to fill a batch;
    only when nothing is there, wait up to ``wait_s`` for the first (then ``waited()``)."""
    msgs = consumer.consume(num_messages=n, timeout=0)
    if not msgs:
        msgs = consumer.consume(num_messages=1, timeout=wait_s)
        waited()
        if msgs:
            msgs += consumer.consume(num_messages=n - 1, timeout=0)
    return msgs


def tool_config(bootstrap: str, props: dict[str, Any]) -> dict[str, Any]:
    """A bench or traffic tool's client of ``bootstrap`` with ``props``: the cluster the
    settings name (RL_KAFKA_BOOTSTRAP_SERVERS) gets their security and RL_KAFKA_EXTRA; a
    broker the tool started itself is plaintext."""
    s = load_settings()
    if bootstrap != s.kafka_bootstrap_servers:
        return {"bootstrap.servers": bootstrap, **props}
    return {**common_config(s), **props, **s.kafka_extra}


def consumer_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    """The service's consumer: offsets are stored by the loop only for processed messages."""
    conf = common_config(settings)
    conf.update(
        {
            "group.id": group_id or settings.kafka_group_id,
            "auto.offset.reset": "earliest",
            # Offsets are committed only after a checkpoint holds the state they reflect
            # (an explicit commit of explicit offsets: nothing is stored or auto-committed).
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "session.timeout.ms": settings.kafka_session_timeout_ms,
            "heartbeat.interval.ms": settings.kafka_heartbeat_interval_ms,
            "fetch.wait.max.ms": settings.kafka_fetch_wait_max_ms,
            # Each partition read to its end says so: its stream time may then follow the
            # wall clock (stream/core/streamtime.py).
            "enable.partition.eof": True,
        }
    )
    if settings.instance_id:
        conf["group.instance.id"] = settings.instance_id
    conf.update(settings.kafka_extra)
    return conf


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent, ordered producer: a retried decision is never written twice."""
    conf = common_config(settings)
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            # A decision waits for company at most 1 ms: at low load each waits the whole
            # linger, which was the median's excess over a bare passthrough.
            "linger.ms": 1,
            "compression.type": "lz4",
            # A record still queued after a freeze this long is given up on, not sent: the
            # group may have handed its partition to another member meanwhile (the loop's
            # PauseWatch then holds it back and withdraws it; a running instance produces
            # it again). A give-up bumps the idempotent producer's epoch; a broker that
            # refuses the bump (the embedded one) fences the producer: the service stops.
            "message.timeout.ms": (
                settings.kafka_session_timeout_ms - settings.kafka_heartbeat_interval_ms
            ),
            # Delivery acts on failures only: no Python callback per delivered decision.
            "delivery.report.only.error": True,
        }
    )
    conf.update(settings.kafka_extra)
    return conf


# librdkafka's own lines up to critical only: for a client whose failure the caller reports.
QUIET = {"log_level": 2}


def admin_config(settings: Settings, log_errors: bool = True) -> dict[str, Any]:
    """``log_errors=False``: a probe whose failure the caller reports itself."""
    conf = common_config(settings)
    if not log_errors:
        conf.update(QUIET)
    conf.update(settings.kafka_extra)
    return conf


def is_benign(err: KafkaError) -> bool:
    """Errors librdkafka recovers from by itself (it retries and reconnects)."""
    return not err.fatal() and (
        err.retriable()
        or err.code()
        in (
            KafkaError._PARTITION_EOF,
            KafkaError._TRANSPORT,
            KafkaError._ALL_BROKERS_DOWN,
            KafkaError.UNKNOWN_TOPIC_OR_PART,
        )
    )


def producer_max_record_bytes(settings: Settings) -> int:
    """The largest record the service's producers accept (librdkafka's message.max.bytes)."""
    return int(settings.kafka_extra.get("message.max.bytes", 1_000_000))


def check_client_configs(settings: Settings) -> None:
    """Build every client once, so a bad librdkafka property stops the start in one line
    naming the variable that set it (ConfigError) instead of a traceback later."""
    for build, conf in (
        (AdminClient, admin_config(settings)),
        (Producer, producer_config(settings)),
        (Consumer, consumer_config(settings)),
    ):
        try:
            client = build({**conf, **QUIET})  # built to be checked: no connect errors
        except KafkaException as exc:
            err = exc.args[0]
            text = err.str() if isinstance(err, KafkaError) else str(exc)
            named = [k for k in settings.kafka_extra if f'"{k}"' in text]
            raise ConfigError(f"{'RL_KAFKA_EXTRA' if named else 'RL_KAFKA_*'}: {text}") from None
        if isinstance(client, Consumer):
            client.close()
        del client
