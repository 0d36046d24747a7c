"""Security basics: TLS and SASL reach every client, secrets never reach logs or errors."""

from __future__ import annotations

import ast
import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest

from stream.config import Settings, load_settings
from stream.kafka import clients
from stream.kafka.clients import check_client_configs, consumer_config, producer_config

SECRET = "pa55-w0rd-never-logged"


# --- Every Kafka client's configuration carries the security settings ------------------
#
# stream.config maps RL_KAFKA_SECURITY_PROTOCOL, RL_KAFKA_SASL_MECHANISM / _USERNAME /
# _PASSWORD and RL_KAFKA_SSL_CA_LOCATION onto security.protocol, sasl.* and ssl.ca.location
# (stream.kafka.clients.common_config); a client certificate and key have no settings of
# their own and come through RL_KAFKA_EXTRA, applied last. A client built without them
# connects in plaintext, unauthenticated, to a cluster that requires them.

SECURED_ENV = {
    "RL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "RL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "RL_KAFKA_SASL_USERNAME": "bandit",
    "RL_KAFKA_SASL_PASSWORD": SECRET,
    "RL_KAFKA_SSL_CA_LOCATION": "/etc/ssl/ca.pem",
    "RL_KAFKA_EXTRA": orjson.dumps(
        {"ssl.certificate.location": "/etc/ssl/client.pem", "ssl.key.location": "/etc/ssl/key.pem"}
    ).decode(),
}
SECURED = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "bandit",
    "sasl.password": SECRET,
    "ssl.ca.location": "/etc/ssl/ca.pem",
    "ssl.certificate.location": "/etc/ssl/client.pem",
    "ssl.key.location": "/etc/ssl/key.pem",
}
CLIENT_CLASSES = {
    "Consumer",
    "Producer",
    "AdminClient",
    "DeserializingConsumer",
    "SerializingProducer",
}
BUILDERS = {"consumer_config", "producer_config", "admin_config"}
STREAM = Path(__file__).resolve().parents[2] / "stream"


class _Built(Exception):
    """Raised by a stand-in client once its configuration is recorded: the run stops there."""


def _capture(monkeypatch, modules: Any, run: Callable[[], Any], stop: str) -> list[dict[str, Any]]:
    """The configurations ``run`` builds the confluent clients of ``modules`` (one or a
    tuple) with, in order: each client class they name is a stand-in (a MagicMock client),
    ``stop``'s raising once its configuration is recorded."""
    confs: list[dict[str, Any]] = []

    def stand_in(name: str) -> Callable[..., Any]:
        def build(conf: dict[str, Any], *args: Any, **kw: Any) -> Any:
            confs.append(dict(conf))
            if name == stop:
                raise _Built(name)
            return mock.MagicMock(name=name)

        return build

    for module in modules if isinstance(modules, tuple) else (modules,):
        for name in CLIENT_CLASSES & set(vars(module)):
            monkeypatch.setattr(module, name, stand_in(name))
    with pytest.raises(_Built):
        run()
    return confs


def _replay(mp, s, tmp):
    from stream.kafka import decisionlog

    log = decisionlog.DecisionLog(s)
    log.n = 4  # as connect() finds it
    return _capture(mp, decisionlog, lambda: log.replay(0, -1, 0, 10), stop="Consumer")


def _state_publisher(mp, s, tmp):
    from stream.state import publisher

    return _capture(mp, publisher, lambda: publisher.StatePublisher(s), stop="Producer")


def _state_reader(mp, s, tmp):
    from stream.state import topicreader

    return _capture(mp, topicreader, lambda: topicreader.read_state_topic(s), stop="Consumer")


def _bench_topic_reader(mp, s, tmp):
    from stream.bench import harness

    run = lambda: harness.topic_reader(s.kafka_bootstrap_servers, "t", "g", 5)  # noqa: E731
    return _capture(mp, harness, run, stop="Consumer")


def _bench_producer(mp, s, tmp):
    from stream.bench import load

    run = lambda: load.produce(s.kafka_bootstrap_servers, "c", "r", 10, 1, 0.0, 5, 0)  # noqa: E731
    return _capture(mp, load, run, stop="Producer")


def _bench_passthrough(mp, s, tmp):
    from stream.bench import harness, load

    run = lambda: load.passthrough(s.kafka_bootstrap_servers, ("c", "r"), "d", 10, 5)  # noqa: E731
    return _capture(mp, (harness, load), run, stop="Producer")  # its reader, then producer


def _soak_producer(mp, s, tmp):
    from stream.bench import harness, soak

    mp.setattr(harness, "fresh_settings", lambda bootstrap, prefix, **kw: s)
    mp.setattr(harness, "ServiceProcess", mock.MagicMock())
    run = lambda: soak.run_soak(10, 0.0, tmp, bootstrap=s.kafka_bootstrap_servers)  # noqa: E731
    return _capture(mp, soak, run, stop="Producer")


def _tool(mp, s, tmp):
    return [clients.tool_config(s.kafka_bootstrap_servers, {"linger.ms": 5})]


def test_a_tool_talks_plaintext_to_a_broker_it_started(secured):
    conf = clients.tool_config("127.0.0.1:1234", {"linger.ms": 5})
    assert conf == {"bootstrap.servers": "127.0.0.1:1234", "linger.ms": 5}


def _demo_traffic(mp, s, tmp):
    import signal

    from stream.offline import traffic

    # simulate() ignores SIGINT in its own process; not in this one.
    quiet = types.SimpleNamespace(signal=lambda *a: None, SIGINT=signal.SIGINT, SIG_IGN=None)
    mp.setattr(traffic, "signal", quiet)
    run = lambda: traffic.simulate(  # noqa: E731
        s.kafka_bootstrap_servers, "c", "r", "d", 1, 1.0, 0, 2.0, mock.MagicMock(), mock.Mock()
    )
    return _capture(mp, traffic, run, stop="Consumer")


def _builder(name: str) -> Callable[..., list[dict[str, Any]]]:
    return lambda mp, s, tmp: [getattr(clients, name)(s)]


# Every place in stream/ that builds a Kafka client's configuration -> its configurations,
# built with the secured settings (the guard below keeps this list complete).
SITES: dict[tuple[str, str], Callable[..., list[dict[str, Any]]]] = {
    # The shared base, with RL_KAFKA_EXTRA as each builder applies it after.
    ("kafka/clients.py", "common_config"): lambda mp, s, tmp: [
        {**clients.common_config(s), **s.kafka_extra}
    ],
    ("kafka/clients.py", "consumer_config"): _builder("consumer_config"),
    ("kafka/clients.py", "producer_config"): _builder("producer_config"),
    ("kafka/clients.py", "admin_config"): _builder("admin_config"),
    ("kafka/decisionlog.py", "DecisionLog.replay"): _replay,
    ("state/publisher.py", "StatePublisher.__init__"): _state_publisher,
    ("state/topicreader.py", "read_state_topic"): _state_reader,
    ("bench/harness.py", "topic_reader"): _bench_topic_reader,
    ("bench/load.py", "produce"): _bench_producer,
    ("bench/load.py", "passthrough"): _bench_passthrough,
    ("bench/soak.py", "run_soak"): _soak_producer,
    ("offline/traffic.py", "simulate"): _demo_traffic,
    ("kafka/clients.py", "tool_config"): _tool,
}
# Clients of a broker the code itself started, on its plaintext listener: nothing to secure
# (checked: they connect to self.bootstrap_servers only).
OWN_BROKER = {
    ("kafka/embedded.py", "EmbeddedBroker._wait_ready"),
    ("kafka/apache.py", "KafkaCluster.wait_ready"),
}


@pytest.fixture
def secured(monkeypatch) -> Settings:
    for name, value in SECURED_ENV.items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.mark.parametrize("site", sorted(SITES), ids="{0[0]}:{0[1]}".format)
def test_every_client_configuration_carries_the_security_settings(
    site, secured, monkeypatch, tmp_path
):
    confs = SITES[site](monkeypatch, secured, tmp_path)
    assert confs, f"{site}: no client built"
    for conf in confs:
        assert conf["bootstrap.servers"] == secured.kafka_bootstrap_servers
        got = {k: conf.get(k) for k in SECURED}
        missing = sorted(k for k in SECURED if got[k] != SECURED[k])
        assert not missing, f"{site[0]}:{site[1]} builds a client without {missing}"


def test_a_plaintext_configuration_names_no_security_it_was_not_given(monkeypatch):
    """Unset, nothing is invented: librdkafka's own defaults apply."""
    for name in SECURED_ENV:
        monkeypatch.delenv(name, raising=False)
    for conf in (consumer_config(load_settings()), producer_config(load_settings())):
        assert conf["security.protocol"] == "PLAINTEXT"
        assert not {k for k in conf if k.startswith(("sasl.", "ssl."))}


def test_librdkafka_accepts_the_security_settings(monkeypatch):
    """Each client is built (nothing connects yet); "probe" makes librdkafka find the
    system's CA store, which this machine has. A property it refused would raise."""
    for name, value in SECURED_ENV.items():
        if name != "RL_KAFKA_EXTRA":  # no client certificate on this machine
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("RL_KAFKA_SSL_CA_LOCATION", "probe")
    check_client_configs(load_settings())


def _keys(node: ast.Dict) -> dict[Any, str]:
    """A dict literal's constant keys -> the source of their values."""
    return {
        k.value: ast.unparse(v)
        for k, v in zip(node.keys, node.values, strict=True)
        if isinstance(k, ast.Constant)
    }


def _client_config_sites() -> dict[tuple[str, str], list[ast.AST]]:
    """Where stream/ builds a Kafka client's configuration, by (file, qualified function):
    a "bootstrap.servers" literal, a call of common_config, or a client constructed with
    anything but a direct call of consumer_config / producer_config / admin_config (whose
    results the test above checks)."""
    sites: dict[tuple[str, str], list[ast.AST]] = {}

    def name_of(func: ast.expr) -> str | None:
        if isinstance(func, ast.Name):
            return func.id
        return func.attr if isinstance(func, ast.Attribute) else None

    def visit(node: ast.AST, scope: list[str], where: str, aliases: dict[str, str]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = [*scope, child.name]
            found = False
            if isinstance(child, ast.Constant) and child.value == "bootstrap.servers":
                found = True
            elif isinstance(child, ast.Dict) and "bootstrap.servers" in _keys(child):
                found = True  # recorded whole: OWN_BROKER's are checked for their address
            elif isinstance(child, ast.Call):
                called = name_of(child.func)
                called = aliases.get(called or "", called)
                if called == "common_config":
                    found = True
                elif called in CLIENT_CLASSES:
                    conf = child.args[0] if child.args else None
                    built = isinstance(conf, ast.Call) and name_of(conf.func) in BUILDERS
                    found = not built
            if found:
                sites.setdefault((where, ".".join(scope) or "<module>"), []).append(child)
            visit(child, inner, where, aliases)

    for path in sorted(STREAM.rglob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = {  # from confluent_kafka import Producer as P
            a.asname: a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("confluent")
            for a in node.names
            if a.asname
        }
        visit(tree, [], path.relative_to(STREAM).as_posix(), aliases)
    return sites


def test_the_security_test_knows_every_place_that_builds_a_client_configuration():
    found = _client_config_sites()
    known = set(SITES) | OWN_BROKER
    assert not set(found) - known, (
        f"new places building a Kafka client configuration: {sorted(set(found) - known)}; "
        "build it from stream.kafka.clients (common_config and RL_KAFKA_EXTRA) and add it "
        "to SITES, or to OWN_BROKER if it only talks to a broker the code started itself"
    )
    assert not known - set(found), f"gone (remove them here): {sorted(known - set(found))}"
    for site in OWN_BROKER:
        confs = [_keys(node) for node in found[site] if isinstance(node, ast.Dict)]
        assert confs, f"{site}: no configuration literal to check"
        for conf in confs:
            assert conf["bootstrap.servers"] == "self.bootstrap_servers", site


def test_the_guard_finds_a_hand_built_configuration(tmp_path, monkeypatch):
    """The scan itself: a client config built by hand (a literal, a key set), a renamed
    client, a common_config extension and a builder's result passed along are each found;
    a client built straight from a builder's call is not."""
    (tmp_path / "mod.py").write_text(
        "from confluent_kafka import Consumer as C, Producer\n"
        "from stream.kafka.clients import common_config, producer_config\n"
        "def hand(b):\n    return Producer({'bootstrap.servers': b})\n"
        "class K:\n    def renamed(self, conf):\n        return C(conf)\n"
        "def extended(s):\n    conf = common_config(s)\n    return conf\n"
        "def passed(s):\n    conf = producer_config(s)\n    return Producer(conf)\n"
        "def fine(s):\n    return Producer(producer_config(s))\n"
        "def keyed(b):\n    conf = {}\n    conf['bootstrap.servers'] = b\n    return conf\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "STREAM", tmp_path)
    assert set(_client_config_sites()) == {
        ("mod.py", "hand"),
        ("mod.py", "K.renamed"),
        ("mod.py", "extended"),
        ("mod.py", "passed"),
        ("mod.py", "keyed"),
    }


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
