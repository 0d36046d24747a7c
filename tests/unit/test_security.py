"""Security basics: TLS and SASL reach every client, secrets never reach logs or errors."""

from __future__ import annotations

import logging

import pytest

from stream.config import load_settings
from stream.kafka.clients import admin_config, consumer_config, producer_config

SECRET = "pa55-w0rd-never-logged"


def test_sasl_and_tls_settings_reach_every_client(monkeypatch):
    monkeypatch.setenv("RL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("RL_KAFKA_SASL_USERNAME", "bandit")
    monkeypatch.setenv("RL_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("RL_KAFKA_SSL_CA_LOCATION", "/etc/ssl/ca.pem")
    s = load_settings()
    for conf in (consumer_config(s), producer_config(s), admin_config(s)):
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
        assert conf["sasl.username"] == "bandit" and conf["sasl.password"] == SECRET
        assert conf["ssl.ca.location"] == "/etc/ssl/ca.pem"
    # ...and librdkafka accepts them: a client is built (nothing connects yet); "probe"
    # makes librdkafka find the system's CA store, which this machine has.
    from confluent_kafka import Producer

    monkeypatch.setenv("RL_KAFKA_SSL_CA_LOCATION", "probe")
    Producer(producer_config(load_settings())).flush(0)


def test_the_secret_is_never_in_settings_reprs_logs_or_errors(monkeypatch, caplog):
    monkeypatch.setenv("RL_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("RL_KAFKA_SASL_USERNAME", "bandit")
    s = load_settings()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("settings: %s / %r / %s", s, s, s.model_dump())
    assert SECRET not in caplog.text
    # A settings error elsewhere names the variable, never the secret.
    monkeypatch.setenv("RL_BATCH_SIZE", "many")
    with pytest.raises(Exception) as exc:
        load_settings()
    assert "RL_BATCH_SIZE" in str(exc.value) and SECRET not in str(exc.value)


def _answers(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except ConnectionRefusedError:
        return False


@pytest.mark.parametrize("host, elsewhere", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_the_metrics_server_binds_where_it_is_told(monkeypatch, host, elsewhere):
    """RL_METRICS_HOST=127.0.0.1 keeps /metrics, /healthz and /readyz off every other
    address (127.0.0.2 is loopback too, yet not bound); the default listens on all."""
    import threading
    import urllib.request

    from prometheus_client import CollectorRegistry

    from stream.observe.probes import Probes

    monkeypatch.setenv("RL_METRICS_HOST", host)
    s = load_settings()
    probes = Probes(1.0, threading.Event(), threading.Event(), None, None)  # type: ignore[arg-type]
    server, port = probes.serve(s.metrics_host, 0, CollectorRegistry())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        assert _answers("127.0.0.2", port) is elsewhere
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_is_unpickled_or_evaluated():
    """No module of the product imports a deserialiser of code or calls eval / exec."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    banned_modules = {"pickle", "marshal", "dill", "shelve", "joblib", "cloudpickle"}
    for pkg in ("stream", "policies"):
        for path in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    names = {(node.module or "").split(".")[0]}
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id not in ("eval", "exec"), f"{path}:{node.lineno}"
                    continue
                else:
                    continue
                assert not names & banned_modules, f"{path}:{node.lineno} imports {names}"
