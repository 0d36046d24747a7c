"""Failpoints, the processing-error policy, delivery failures and dead letters that never
fail for their size: each with fakes, no broker."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import KafkaError

from stream.config import closest_env_name, load_settings
from stream.errorpolicy import ProcessingErrors
from stream.errors import ConfigError, DeliveryError, TooManyProcessingErrors
from stream.failpoints import POINTS, Failpoints, InjectedFault, parse
from stream.kafka.deadletter import DeadLetters, Source
from stream.kafka.delivery import Delivery, classify
from stream.lifecycle import Paused, PauseWatch
from stream.logs import RepeatFilter
from tests.fakes import FakeMessage, FakeProducer


# -- failpoints ---------------------------------------------------------------------------
def test_failpoints_parse_and_reject_unknown_names_and_probabilities():
    assert parse("decode:0.5, commit:1") == {"decode": 0.5, "commit": 1.0}
    assert parse("") == {}
    with pytest.raises(ValueError, match="unknown failpoint 'nope'"):
        parse("nope:0.1")
    with pytest.raises(ValueError, match="0..1"):
        parse("decode:1.5")
    with pytest.raises(ConfigError, match="RL_FAILPOINTS"):
        load_settings(failpoints="decode:x")


def test_failpoints_are_off_by_default_and_seeded_when_armed():
    assert Failpoints.from_spec("", 0) is None

    def draws(seed: int) -> list[bool]:
        fp = Failpoints.from_spec("join:0.3", seed)
        assert fp is not None
        out = []
        for _ in range(200):
            try:
                fp.check("join")
                fp.check("decode")  # not armed: never raises
                out.append(False)
            except InjectedFault:
                out.append(True)
        return out

    assert draws(1) == draws(1) != draws(2)
    assert 30 <= sum(draws(1)) <= 90  # 200 draws at 0.3
    assert set(POINTS) >= {"decode", "decide", "emit", "join", "learn", "commit", "revoke"}


# -- processing errors ----------------------------------------------------------------------
def test_fail_mode_re_raises_and_dead_letter_mode_counts_within_a_minute():
    with pytest.raises(ValueError, match="boom"):
        ProcessingErrors("fail", 100).handle(ValueError("boom"))
    now = [0.0]
    errors = ProcessingErrors("dead_letter", 3, clock=lambda: now[0])
    for _ in range(3):
        errors.handle(ValueError("x"))
    now[0] = 61.0  # the first three are over a minute old
    for _ in range(3):
        errors.handle(ValueError("x"))
    with pytest.raises(TooManyProcessingErrors, match="RL_MAX_PROCESSING_ERRORS=3"):
        errors.handle(ValueError("x"))


# -- delivery -------------------------------------------------------------------------------
def test_error_kinds():
    assert classify(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)) == "refused"
    assert classify(KafkaError(KafkaError._MSG_TIMED_OUT)) == "transient"
    assert classify(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)) == "fatal"
    assert classify(KafkaError(KafkaError._FENCED, fatal=True)) == "fatal"


def test_a_timed_out_record_is_produced_again_by_the_loop_not_the_callback():
    attempts: list[bytes | None] = []

    def fate(msg: FakeMessage) -> KafkaError | None:
        attempts.append(msg.value())
        return KafkaError(KafkaError._MSG_TIMED_OUT) if len(attempts) == 1 else None

    producer = FakeProducer(fate)
    d = Delivery(producer, "decisions")  # type: ignore[arg-type]
    d.produce(b"v", b"k")
    assert d.flush(1.0) == 0
    assert attempts == [b"v", b"v"] and d.retries == 1
    assert [m.value() for m in producer.delivered] == [b"v"]


def test_a_record_given_up_on_after_a_freeze_is_withdrawn_not_produced_again():
    """librdkafka times out a record queued across a freeze past the session; the guard
    (the loop's PauseWatch) stops it being produced again, it stays outstanding (a
    checkpoint commits nothing past its input) without the flush waiting for it, and the
    freeze stays for the loop to act on; the rejoin's purge withdraws it."""
    attempts: list[bytes | None] = []

    def fate(msg: FakeMessage) -> KafkaError | None:
        attempts.append(msg.value())
        return KafkaError(KafkaError._MSG_TIMED_OUT)

    watch = PauseWatch(0.05)
    producer = FakeProducer(fate)
    d = Delivery(producer, "decisions")  # type: ignore[arg-type]
    d.may_resend = watch.running
    d.produce(b"v", b"k")
    time.sleep(0.1)  # the watch's thread is not started: it looks frozen
    t = time.monotonic()
    assert d.flush(5.0) == 1 and time.monotonic() - t < 1.0
    assert attempts == [b"v"] and d.retries == 0 and producer.delivered == []
    with pytest.raises(Paused):
        watch.check()
    d.purge()
    assert d.flush(1.0) == 0 and attempts == [b"v"]


def test_a_decision_queued_longer_than_a_freeze_could_last_unnoticed_is_given_up_on(
    monkeypatch,
):
    monkeypatch.setenv("RL_KAFKA_SESSION_TIMEOUT_MS", "15000")
    monkeypatch.setenv("RL_KAFKA_HEARTBEAT_INTERVAL_MS", "1000")
    from stream.kafka.clients import producer_config

    assert producer_config(load_settings())["message.timeout.ms"] == 14_000
    # A short session too: a longer timeout would send, after a freeze past the session,
    # decisions for partitions that another member decided meanwhile.
    monkeypatch.setenv("RL_KAFKA_SESSION_TIMEOUT_MS", "2000")
    monkeypatch.setenv("RL_KAFKA_HEARTBEAT_INTERVAL_MS", "500")
    assert producer_config(load_settings())["message.timeout.ms"] == 1_500


def test_a_fenced_producer_is_fatal_not_produced_again_forever():
    """Found by CI: the embedded broker answered PRODUCER_FENCED after an epoch bump and
    every decision was produced again, ~60,000 times a second, until the process was
    killed; a fenced producer can send nothing again: the service stops (a restart
    resumes from the last checkpoint)."""
    assert classify(KafkaError(KafkaError.PRODUCER_FENCED)) == "fatal"
    producer = FakeProducer(lambda m: KafkaError(KafkaError.PRODUCER_FENCED))
    d = Delivery(producer, "decisions")  # type: ignore[arg-type]
    d.produce(b"v", b"k")
    with pytest.raises(DeliveryError):
        d.flush(1.0)


def test_a_refused_record_goes_to_its_owner_once_and_nothing_loops():
    producer = FakeProducer(lambda m: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    refused: list[int] = []
    d = Delivery(producer, "decisions")  # type: ignore[arg-type]
    d.produce(b"v", b"k", on_refused=lambda err: refused.append(err.code()))
    assert d.flush(1.0) == 0
    assert refused == [KafkaError.MSG_SIZE_TOO_LARGE] and d.retries == 0


def test_a_record_refused_at_produce_goes_to_its_owner_at_once():
    d = Delivery(FakeProducer(limit=10), "decisions")  # type: ignore[arg-type]
    refused: list[int] = []
    d.produce(b"x" * 100, b"k", on_refused=lambda err: refused.append(err.code()))
    assert refused == [KafkaError.MSG_SIZE_TOO_LARGE]
    with pytest.raises(DeliveryError):  # no owner and no default: never silently dropped
        d.produce(b"x" * 100, b"k")


def test_a_fatal_producer_error_stops_at_the_next_service():
    producer = FakeProducer(lambda m: KafkaError(KafkaError._FENCED, fatal=True))
    d = Delivery(producer, "decisions")  # type: ignore[arg-type]
    d.produce(b"v", b"k")
    with pytest.raises(DeliveryError, match="producer failed"):
        d.flush(1.0)


def test_flush_gives_up_at_the_shutdown_deadline():
    producer = FakeProducer()
    producer.flush = lambda timeout=0: 1  # type: ignore[method-assign]  # never drains
    d = Delivery(producer, "decisions")  # type: ignore[arg-type]
    import time

    start = time.monotonic()
    assert d.flush(30.0, stop_by=lambda: start + 0.2) >= 1
    assert time.monotonic() - start < 2.0


# -- dead letters ---------------------------------------------------------------------------
def _source(value: bytes) -> Source:
    return Source("contexts", 3, 42, 1000, b"dom", value)


def test_a_dead_letter_too_large_for_the_producer_is_cut_with_its_original_size():
    producer = FakeProducer(limit=50_000)
    dl = DeadLetters(Delivery(producer, "decisions"), "dlq", 50_000)  # type: ignore[arg-type]
    dl.send("oversized", "too big", _source(b"x" * 200_000))
    producer.poll()
    (msg,) = producer.delivered
    h = dict(msg.headers())
    assert h["value_truncated"] == b"true" and h["original_size"] == b"200000"
    assert h["source_offset"] == b"42" and h["error_code"] == b"oversized"
    assert 0 < len(msg.value() or b"") < 50_000


def test_a_dead_letter_the_topic_refuses_is_cut_then_sent_without_its_value():
    # The topic takes at most 1 kB (its max.message.bytes), the producer up to 1 MB.
    def fate(m: FakeMessage) -> KafkaError | None:
        too_big = len(m.value() or b"") > 1000
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if too_big else None

    producer = FakeProducer(fate)
    dl = DeadLetters(Delivery(producer, "decisions"), "dlq", 1_000_000)  # type: ignore[arg-type]
    dl.send("bad_context", "why", _source(b"y" * 5000))
    for _ in range(3):
        producer.poll()
        dl.delivery.service()
    (msg,) = producer.delivered
    assert msg.value() is None and dict(msg.headers())["original_size"] == b"5000"


def test_a_dead_letter_refused_even_without_its_value_raises():
    producer = FakeProducer(lambda m: KafkaError(KafkaError.INVALID_RECORD))
    dl = DeadLetters(Delivery(producer, "decisions"), "dlq", 1_000_000)  # type: ignore[arg-type]
    dl.send("bad_context", "why", _source(b"z"))
    with pytest.raises(DeliveryError, match="without its value"):
        for _ in range(3):
            producer.poll()
            dl.delivery.service()


# -- settings and logs --------------------------------------------------------------------------
def test_a_settings_error_is_one_line_and_names_every_policy_variable(monkeypatch):
    for name in ("RL_POLICY", "RL_BASELINE_POLICY", "RL_SHADOW_POLICIES"):
        monkeypatch.setenv(name, "bogus")
        with pytest.raises(ConfigError) as e:
            load_settings()
        assert str(e.value).startswith(f"{name}: unknown policy 'bogus'; known: ")
        assert "\n" not in str(e.value)
        monkeypatch.delenv(name)


def test_choices_ignore_case(monkeypatch):
    monkeypatch.setenv("RL_LOG_LEVEL", "info")
    monkeypatch.setenv("RL_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("RL_ON_PROCESSING_ERROR", "Dead_Letter")
    monkeypatch.setenv("RL_SHADOW_POLICIES", "LinUCB")
    s = load_settings()
    assert (s.log_level, s.kafka_security_protocol) == ("INFO", "SASL_SSL")
    assert s.on_processing_error == "dead_letter" and s.shadow_policies == ["linucb"]


def test_a_typo_gets_the_closest_setting():
    assert closest_env_name("RL_POLCY") == "RL_POLICY"
    assert closest_env_name("ENABLE_RL_ADVANCE") == "ENABLE_RL_ADVANCED"
    assert closest_env_name("RL_SOMETHING_ELSE_ENTIRELY") is None


def test_a_repeated_log_line_passes_once_per_interval_with_its_count():
    now = [0.0]
    f = RepeatFilter(every_s=10.0, clock=lambda: now[0])

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("librdkafka", logging.ERROR, "", 0, msg, (), None)

    assert f.filter(rec("Connect to 127.0.0.1:9092 failed (after 3ms)"))
    assert not f.filter(rec("Connect to 127.0.0.1:9092 failed (after 7ms)"))
    assert not f.filter(rec("Connect to 127.0.0.1:9092 failed (after 9ms)"))
    assert f.filter(rec("another line"))
    now[0] = 10.5
    r = rec("Connect to 127.0.0.1:9092 failed (after 1ms)")
    assert f.filter(r) and "(+2 like it in the last 10 s)" in r.getMessage()
